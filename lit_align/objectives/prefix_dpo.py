"""Prefix-DPO: DPO on partial generations that share a prompt and a partial answer.

A record {prompt x, prefix p, chosen y_w, rejected y_l, partial} holds a shared partial answer p (right so
far) and two continuations of it: the rejected one goes wrong, the chosen one is the correction. The
loss is DPO's (objectives/dpo.py: same variants, β, label smoothing, NLL term, length normalisation,
reference modes) with the shared part as context:

    h = [log π_θ(y_w | x, p) - log π_ref(y_w | x, p)] - [log π_θ(y_l | x, p) - log π_ref(y_l | x, p)]
    L = Σ_pairs ℓ(h) / number of pairs

Only the continuations after the shared part carry loss; partial continuations get no end token (the
tokenizer never invents one). The context (x, p) of each pair is computed ONCE, for the policy and for
the reference: the left-padded contexts run with use_cache=True, their key/value cache is repeated for
the two continuations, which run on it (logprobs.shared_context_logps). Gradients flow
through the cache into the context's computation, so the result (losses and gradients) equals running
x + p + y twice (`shared_context: false`, or DPO on the same records), up to float rounding; with an
empty prefix it is DPO. π_ref is a constant; the mean is over the pairs of the optimizer step (with
`pair_weights`: Σ w·ℓ / Σ w, as DPO's).

Metrics: those of DPO, plus {split}/prefix_fraction: the share of answer tokens (shared prefix +
continuation, over chosen and rejected) that were the shared prefix.
"""

from __future__ import annotations

from lit_align.errors import LitAlignError
from lit_align.logprobs import LogpsFn, joined_context_logps, shared_context_logps
from lit_align.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.dpo import DPO
from lit_align.reference import ReferenceSpec


def check_shared_context(objective) -> None:
    if objective.shared_context and objective.policy_spec.gradient_checkpointing:
        raise LitAlignError(f"{type(objective).__name__}: gradient checkpointing turns the key/value cache off; "
                            "set shared_context: false with it")


class PrefixDPO(DPO):
    kind = "prefix_pair"

    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        beta: float = 0.1,
        loss: str = "sigmoid",
        label_smoothing: float = 0.0,
        nll_weight: float = 0.0,
        length_normalize: bool | None = None,
        reference: ReferenceSpec | None = None,
        shared_context: bool = True,
        pair_weights: bool = False,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            beta: β, the strength of the implicit KL penalty towards the reference (IPO: its τ).
            loss: sigmoid (DPO; with label_smoothing: cDPO), robust, ipo or hinge.
            label_smoothing: ε, the assumed probability that a preference label is flipped (sigmoid, robust;
                an error with ipo or hinge).
            nll_weight: α, weight of an NLL term on the chosen continuation (0: none).
            length_normalize: divide every sequence log-prob by its token count before the loss (see DPO).
                None: true for ipo, else false.
            reference: where π_ref comes from: mode copy, disable_adapter or cache (see DPO).
            shared_context: run each pair's context once and reuse its key/value cache (false: run the
                context with each continuation; needed with gradient checkpointing, which turns the
                cache off).
            pair_weights: scale each pair's loss by its record's `weight` (see DPO; objectives/pairs.py).
        """
        self.shared_context = shared_context  # the layout, before DPO builds the reference with `logps_fn`
        super().__init__(policy, optim, beta, loss, label_smoothing, nll_weight, length_normalize, reference,
                         pair_weights=pair_weights)
        check_shared_context(self)

    def logps_fn(self) -> LogpsFn:
        return shared_context_logps if self.shared_context else joined_context_logps

    def step(self, batch: dict) -> Sums:
        sums = super().step(batch)
        cont = (batch["labels"] != -100).sum()                       # continuation tokens, all 2B rows
        shared = batch["prefix_tokens"].sum() * batch["num_continuations"]
        sums["prefix_fraction"] = (shared.float(), shared + cont)
        return sums
