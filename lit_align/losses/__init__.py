"""Loss functions as pure tensor functions: per-example values in, per-example losses out. No Lightning.

Reductions (over tokens, examples, devices and accumulated micro-batches) happen in objectives/base.py,
which divides the summed loss by the global count of what it is averaged over.

  likelihood.py   SFT's NLL, IW-SFT's weighted NLL, DPO's optional NLL term
  preference.py   DPO's family (sigmoid, robust/cDPO, IPO, hinge), SimPO, ORPO, per-pair weights
  ranking.py      the reward model's Bradley-Terry loss, listwise DPO (Plackett-Luce, all pairs)
  policy_gradient.py  online RL: group advantages (GRPO, Dr.GRPO, RLOO), KL estimators, the clipped surrogate,
                  exact loss aggregation
"""

from lit_align.losses.likelihood import chosen_nll, nll, weighted_nll
from lit_align.losses.preference import (MAX_MEAN_LOGP, PREFERENCE_LOSSES, SMOOTHED_LOSSES, OddsRatioLoss, PreferenceLoss,
                                         dpo_sigmoid_loss, hinge_loss, ipo_loss, log_odds, orpo_loss, preference_loss,
                                         robust_dpo_loss, simpo_loss, weighted_pair_sum)
from lit_align.losses.ranking import (RANKING_LOSSES, all_pairs_dpo_loss, bradley_terry_loss, plackett_luce_dpo_loss,
                                      ranked_margins)

__all__ = ["nll", "chosen_nll", "weighted_nll", "PreferenceLoss", "OddsRatioLoss", "PREFERENCE_LOSSES",
           "SMOOTHED_LOSSES", "MAX_MEAN_LOGP", "dpo_sigmoid_loss", "robust_dpo_loss", "ipo_loss", "hinge_loss",
           "preference_loss", "weighted_pair_sum", "simpo_loss", "log_odds", "orpo_loss", "RANKING_LOSSES",
           "ranked_margins", "bradley_terry_loss", "plackett_luce_dpo_loss", "all_pairs_dpo_loss"]
