from lit_align.callbacks.checkpoint import RunCheckpoint
from lit_align.callbacks.export import ExportHF
from lit_align.callbacks.generations import GenerationWriter, SampleGenerations
from lit_align.callbacks.nonfinite import NonFiniteGuard
from lit_align.callbacks.probes import Probes
from lit_align.callbacks.requeue import SlurmRequeue
from lit_align.callbacks.steering import SteerDuringEval

__all__ = ["RunCheckpoint", "ExportHF", "Probes", "SampleGenerations", "GenerationWriter", "NonFiniteGuard",
           "SlurmRequeue", "SteerDuringEval"]
