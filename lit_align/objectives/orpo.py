"""ORPO: Monolithic Preference Optimization without Reference Model (Hong et al. 2024).

SFT on the chosen answer plus an odds-ratio term that pushes the chosen answer's odds above the rejected
one's, in one stage and without a reference. For a pair (x, y_w, y_l), with log π(y|x) summed over the
continuation's |y| target tokens (the prompt is context; the end token counts for full answers):

    p̄(y)    = exp(log π_θ(y|x) / |y|)                the per-token geometric mean probability
    odds(y) = p̄(y) / (1 - p̄(y))                      log odds = log p̄ - log(1 - p̄), computed as
                                                       x - log(-expm1(x)) for x = log p̄ (losses.log_odds)
    ℓ       = -log π_θ(y_w|x) / |y_w|  +  λ · (-log σ(log odds(y_w) - log odds(y_l)))
    L       = Σ_pairs ℓ / number of pairs                (pair_weights: Σ w·ℓ / Σ w)

over the pairs of the whole optimizer step (every accumulated micro-batch, every device; objectives/base.py).
The NLL term is the paper's L_SFT: a per-token mean over the chosen answer of each pair, then the mean over
pairs like the odds-ratio term, so L is a per-pair mean of the two, exact under accumulation and across
devices. (The authors' code and TRL instead average the NLL over all chosen tokens of the micro-batch, which
weighs long answers more and depends on how pairs fall into micro-batches.) λ = `odds_ratio_weight`, default
0.1: the paper's runs (the authors' Mistral-ORPO script passes --alpha 0.1) and TRL's ORPOConfig.beta.
No reference model is built or held in memory; each step runs the policy only (one forward pass over chosen
and rejected, or with `packed` one row per pair; objectives/pairs.py).

Metrics (train per optimizer step, every validation set per epoch), each a mean over pairs (the loss only is
weighted), with TRL's ORPO names: {split}/loss, {split}/nll (the NLL term), {split}/log_odds_ratio (log σ(log
odds(y_w) - log odds(y_l)), i.e. minus the odds-ratio term), {split}/log_odds_chosen (log odds(y_w) - log
odds(y_l)), {split}/rewards/chosen = λ · log π(y_w|x) / |y_w| (detached), {split}/rewards/rejected,
/margins, /accuracy, and the policy's {split}/logps/{chosen, rejected, margins, accuracy} (summed over
tokens), as DPO's.
"""

from __future__ import annotations

from lit_align.errors import LitAlignError
from lit_align.losses.preference import orpo_loss
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.pairs import PairObjective


class ORPO(PairObjective):
    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        odds_ratio_weight: float = 0.1,
        packed: bool = False,
        pair_weights: bool = False,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            odds_ratio_weight: λ, the weight of the odds-ratio term next to the NLL of the chosen answer.
            packed: one row per pair, the prompt once (as DPO's `packed`): the same losses and gradients.
            pair_weights: scale each pair's loss by its record's `weight` (objectives/pairs.py).
        """
        super().__init__(policy, optim, packed, pair_weights)
        if odds_ratio_weight < 0:
            raise LitAlignError(f"odds_ratio_weight must be >= 0, not {odds_ratio_weight}")
        self.odds_ratio_weight = odds_ratio_weight

    def step(self, batch: dict) -> Sums:
        policy = self.policy_logps(batch)                                   # (B, 2) fp32, with gradient
        out = orpo_loss(policy.logps[:, 0], policy.logps[:, 1], policy.tokens[:, 0], policy.tokens[:, 1],
                        self.odds_ratio_weight)
        n = out.losses.shape[0]
        return {
            **self.preference_sums(out.losses, out.chosen_rewards, out.rejected_rewards, policy.logps, batch),
            "nll": (out.nll.sum(), n),
            "log_odds_ratio": (out.log_odds_ratio.sum(), n),
            "log_odds_chosen": (out.log_odds_chosen.sum(), n),
        }
