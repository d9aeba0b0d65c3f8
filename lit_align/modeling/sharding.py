"""Whether a run's strategy shards the weights across ranks: one answer for every place that must act differently
then (export gathers the full state dict; evaluation keeps one forward pass per batch on every rank; sampling keeps
ranks generating in step), so they cannot disagree about which strategies shard."""

from __future__ import annotations


def shards_weights(trainer) -> bool:
    """True under FSDP (1 and 2) and ModelParallel: the module's parameters are wrapped or sharded (even on one
    rank), and on several ranks every forward pass gathers weights from all of them, so all ranks must run the same
    number of passes."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


def ranks_pass_together(trainer) -> bool:
    """True when every rank must run the same forward passes: weights sharded (shards_weights) over several ranks."""
    return trainer.world_size > 1 and shards_weights(trainer)
