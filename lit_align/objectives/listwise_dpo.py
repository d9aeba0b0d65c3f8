"""DPO on ranked lists: k >= 2 completions of one prompt, best first (records {prompt, completions, scores};
data/records.py kind "ranked"; a pair is a ranking of two).

With the implicit rewards r_j = β (log π_θ(y_j|x) - log π_ref(y_j|x)) of the k completions, y_0 the best:

    plackett_luce:  l = -Σ_{j=0}^{k-2} log [ exp(r_j) / Σ_{m=j}^{k-1} exp(r_m) ]
                    (the ranking's likelihood under the Plackett-Luce model; Rafailov et al. 2023, A.3)
    all_pairs:      l = 1/C(k,2) Σ_{i<j} -log σ(r_i - r_j)      (DPO on every ordered pair, averaged)

    L = Σ_x w_x · (l_x + α · nll(y_0 | x)) / Σ_x w_x    over the optimizer step's prompts (w = 1 without
                                                          pair_weights; nll: a per-token mean, as DPO's)

For k = 2 both are DPO's sigmoid loss. Each prompt runs once and its k continuations on its key/value cache
(`shared_context`, the layout of prefix-DPO: collate_prefix, logprobs.shared_context_logps; rows
continuation-major: [0:B] the best of each prompt, ..., [(k-1)B:kB] the worst), or with `shared_context: false`
prompt + continuation in each of the k·B rows of one forward pass (collate.py); the reference is DPO's (a frozen
copy, the LoRA base, or a cache). ListwiseDPO is a pair objective of its own (objectives/pairs.py: layout,
`pair_weights`, the shared metrics), not a DPO: DPO's options that mean nothing on a ranking (label_smoothing,
length_normalize, packed) are not among its options (`removed_settings`: checkpoints written while it subclassed DPO
hold their only values, and resume). Metrics: the shared naming with chosen = the best and rejected
= the worst completion ({split}/rewards/{chosen, rejected, margins, accuracy}, {split}/logps/*), plus
{split}/rewards/ranking_accuracy: the share of the C(k,2) pairs whose rewards are in the ranking's order.
"""

from __future__ import annotations

from typing import Literal

from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import SeqLogps
from lit_align.losses import RANKING_LOSSES, chosen_nll, ranked_margins
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.pairs import PairObjective, check_shared_context
from lit_align.objectives.reference import ReferenceSpec, build_reference


class ListwiseDPO(PairObjective):
    removed_settings = {"label_smoothing": 0.0, "length_normalize": None}
    # (hyperparameters of the DPO it subclassed until issue 23, which it could not set: a checkpoint holds these)

    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        beta: float = 0.1,
        loss: Literal["plackett_luce", "all_pairs"] = "plackett_luce",
        nll_weight: float = 0.0,
        reference: ReferenceSpec | None = None,
        pair_weights: bool = False,
        shared_context: bool = True,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            beta: β, the strength of the implicit KL penalty towards the reference.
            loss: plackett_luce (the whole ranking) or all_pairs (DPO on its C(k,2) pairs, averaged).
            nll_weight: α, weight of an NLL term on the best completion (0: none).
            reference: where π_ref comes from (as DPO's).
            pair_weights: scale each prompt's loss by its record's `weight` (objectives/pairs.py).
            shared_context: run each prompt once and its k completions on its key/value cache
                (logprobs.shared_context_logps, the layout of prefix-DPO; false: prompt + completion in each of
                the k rows, needed with gradient checkpointing). The same losses and gradients up to rounding.
        """
        if loss not in RANKING_LOSSES:
            raise LitAlignError(f"loss must be one of {', '.join(RANKING_LOSSES)}, not '{loss}'")
        if beta <= 0:
            raise LitAlignError(f"beta must be > 0, not {beta}")
        if nll_weight < 0:
            raise LitAlignError(f"nll_weight must be >= 0, not {nll_weight}")
        super().__init__(policy, optim, packed=False, pair_weights=pair_weights)
        self.beta, self.loss_name, self.nll_weight = beta, loss, nll_weight
        self.shared_context = shared_context
        check_shared_context(self)
        self.reference = build_reference(reference)

    def layout_name(self) -> str:  # (B, k) log-probs
        return "shared_ranked" if self.shared_context else "ranked"

    def step(self, batch: dict) -> Sums:
        policy: SeqLogps = self.policy_logps(batch)               # (B, k) fp32, with gradient
        ref: SeqLogps = self.reference.matching(batch, self.model, policy.tokens)   # (B, k) fp32, constants
        losses = RANKING_LOSSES[self.loss_name](policy.logps, ref.logps, self.beta)     # (B,)
        rewards = (self.beta * (policy.logps - ref.logps)).detach()                     # (B, k)
        sums = {}
        if self.nll_weight > 0:
            nll = chosen_nll(policy.logps[:, 0], policy.tokens[:, 0])  # (B,) per-token mean of the best
            losses = losses + self.nll_weight * nll
            sums["nll"] = (nll.detach().sum(), losses.shape[0])
        ordered = (ranked_margins(rewards) > 0).float().mean(-1)                        # (B,) pairs in order
        ends = policy.logps[:, [0, -1]]                                                 # (B, 2) best, worst
        return {**self.preference_sums(losses, rewards[:, 0], rewards[:, -1], ends, batch),
                "rewards/ranking_accuracy": (ordered.sum(), losses.shape[0]), **sums}
