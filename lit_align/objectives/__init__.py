from lit_align.objectives.base import Objective, OptimSpec
from lit_align.objectives.dpo import DPO
from lit_align.objectives.grpo import GRPO
from lit_align.objectives.iw_sft import IWSFT
from lit_align.objectives.listwise_dpo import ListwiseDPO
from lit_align.objectives.online import OnlineObjective
from lit_align.objectives.online_dpo import OnlineDPO
from lit_align.objectives.orpo import ORPO
from lit_align.objectives.pairs import PairObjective
from lit_align.objectives.prefix_dpo import PrefixDPO
from lit_align.objectives.reward_model import RewardModel
from lit_align.objectives.sft import SFT
from lit_align.objectives.simpo import SimPO

__all__ = ["Objective", "OptimSpec", "PairObjective", "SFT", "DPO", "PrefixDPO", "SimPO", "ORPO", "ListwiseDPO", "IWSFT",
           "RewardModel", "OnlineObjective", "GRPO", "OnlineDPO"]

from lit_align.data.label_noise import LabelNoise  # noqa: E402
from lit_align.objectives.base import allow_in_checkpoints  # noqa: E402
from lit_align.objectives.reference import ReferenceSpec  # noqa: E402
from lit_align.weights import WeightSpec  # noqa: E402

allow_in_checkpoints(ReferenceSpec, WeightSpec, LabelNoise)
