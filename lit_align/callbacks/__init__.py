from lit_align.callbacks.checkpoint import RunCheckpoint
from lit_align.callbacks.export import ExportHF

__all__ = ["RunCheckpoint", "ExportHF"]
