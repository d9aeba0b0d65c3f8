from lit_align.objectives.base import Objective, OptimSpec
from lit_align.objectives.sft import SFT

__all__ = ["Objective", "OptimSpec", "SFT"]
