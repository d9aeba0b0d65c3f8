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
from lit_align.objectives.base import Sums
from lit_align.objectives.dpo import DPO
from lit_align.objectives.pairs import check_shared_context


class PrefixDPO(DPO):
    def __init__(self, *args, shared_context: bool = True, **kwargs):
        """DPO's options (objectives/dpo.py: policy, optim, beta, loss, label_smoothing, nll_weight,
        length_normalize, reference, pair_weights), and:

        Args:
            shared_context: run each pair's context once and reuse its key/value cache (false: run the
                context with each continuation; needed with gradient checkpointing, which turns the
                cache off).
        """
        if kwargs.get("packed"):
            raise LitAlignError("PrefixDPO has no packed layout: its shared context already runs each pair's "
                                "prompt and prefix once (shared_context: true)")
        super().__init__(*args, **kwargs)
        self.shared_context = shared_context
        check_shared_context(self)

    def layout_name(self) -> str:
        return "prefix_pair" if self.shared_context else "prefix_pair_joined"

    def step(self, batch: dict) -> Sums:
        sums = super().step(batch)
        cont = (batch["labels"] != -100).sum()                       # continuation tokens, all 2B rows
        shared = batch["prefix_tokens"].sum() * batch["num_continuations"]
        sums["prefix_fraction"] = (shared.float(), shared + cont)
        return sums
