from lit_align.callbacks.checkpoint import RunCheckpoint
from lit_align.callbacks.export import ExportHF
from lit_align.callbacks.probes import Probes

__all__ = ["RunCheckpoint", "ExportHF", "Probes"]
