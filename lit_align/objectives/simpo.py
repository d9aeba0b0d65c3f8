"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al. 2024).

For a pair (x, y_w, y_l), with log π(y|x) summed over the continuation's |y| target tokens (the prompt is
context; the end token counts for full answers):

    r(y) = β/|y| · log π_θ(y|x)                       the implicit reward: β times the per-token mean log-prob
    ℓ    = -log σ(r(y_w) - r(y_l) - γ)                γ: the target reward margin
    L    = Σ_pairs ℓ / number of pairs                 (pair_weights: Σ w·ℓ / Σ w)

over the pairs of the whole optimizer step (every accumulated micro-batch, every device; objectives/base.py).
There is no reference: no reference model is built or held in memory, and each step runs the policy only
(one forward pass over chosen and rejected, or with `packed` one row per pair; objectives/pairs.py).
Defaults follow the authors' code (princeton-nlp/SimPO, SimPOConfig): β = 2.0 and γ = 0.25 β = 0.5; their
tuned runs use β 2.0-10 and γ/β 0.3-0.8 (e.g. Mistral-7B-Base β = 2.0, γ = 1.6). Their loss_type hinge,
label smoothing and SFT term are not implemented. With equal per-token log-probs ℓ = softplus(γ) = log(1 + e^γ).

Metrics (train per optimizer step, every validation set per epoch), each a mean over pairs (the loss only is
weighted): {split}/loss, {split}/rewards/chosen = r(y_w) (detached), {split}/rewards/rejected = r(y_l),
{split}/rewards/margins, {split}/rewards/accuracy (share with r(y_w) > r(y_l)), and the policy's
{split}/logps/{chosen, rejected, margins, accuracy} (summed over tokens, not length-normalised), as DPO's.
"""

from __future__ import annotations

from lit_align.errors import LitAlignError
from lit_align.losses.preference import simpo_loss
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.pairs import PairObjective


class SimPO(PairObjective):
    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        beta: float = 2.0,
        gamma: float = 0.5,
        packed: bool = False,
        pair_weights: bool = False,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            beta: β, the scale of the length-normalised reward β/|y| · log π(y|x).
            gamma: γ, the target reward margin (in reward units; the authors' default γ/β = 0.25).
            packed: one row per pair, the prompt once (as DPO's `packed`): the same losses and gradients.
            pair_weights: scale each pair's loss by its record's `weight` (objectives/pairs.py).
        """
        super().__init__(policy, optim, packed, pair_weights)
        if beta <= 0:
            raise LitAlignError(f"beta must be > 0, not {beta}")
        if gamma < 0:
            raise LitAlignError(f"gamma (the target reward margin) must be >= 0, not {gamma}")
        self.beta, self.gamma = beta, gamma

    def step(self, batch: dict) -> Sums:
        policy = self.policy_logps(batch)                                   # (B, 2) fp32, with gradient
        out = simpo_loss(policy.logps[:, 0], policy.logps[:, 1], policy.tokens[:, 0], policy.tokens[:, 1],
                         self.beta, self.gamma)
        return self.preference_sums(out.losses, out.chosen_rewards, out.rejected_rewards, policy.logps, batch)
