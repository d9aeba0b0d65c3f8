"""Steering during an objective's evaluation: a saved CAA vector (lit_align/steering/vectors.py) applied to the
policy during validation and test."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from lit_align.steering.vectors import Steering, SteeringVector


class SteerDuringEval(Callback):
    """Apply a saved steering vector during validation and test of any objective (its metrics, ab/p_match
    included, are then those of the steered policy: e.g. CAA on top of a fine-tuned model). The prompt lengths
    come from each batch. A reference model that is the policy itself (reference mode disable_adapter) runs
    through the same blocks and is steered too; a frozen copy is not. Training steps and probes are not steered."""

    def __init__(self, vector: str, multiplier: float = 1.0, layers: list[int] | None = None,
                 positions: str = "after_prompt", check: str = "weights"):
        """
        Args:
            vector: a file written by SteeringVector.save (e.g. by `lit_align steer`).
            multiplier: α, the multiple of the vector added.
            layers: blocks to steer (default: every layer of the vector).
            positions: after_prompt (CAA) or all.
            check: weights, architecture or none (steering.CHECKS).
        """
        self.vector = SteeringVector.load(vector)
        self.multiplier, self.layers, self.positions, self.check = multiplier, layers, positions, check
        self._steering: Steering | None = None

    def _start(self, pl_module) -> None:
        self._stop()
        model = getattr(pl_module, "model", None) or pl_module
        self._steering = self.vector.apply(model, self.multiplier, self.layers, self.positions, check=self.check)
        self._steering.__enter__()

    def _batch(self, batch) -> None:
        if self._steering is not None and isinstance(batch, dict) and "context_tokens" in batch:
            self._steering.set_prompt_lengths(batch)

    def _stop(self) -> None:
        if self._steering is not None:
            self._steering.remove()
            self._steering = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._stop()

    on_test_start, on_test_batch_start, on_test_end = on_validation_start, on_validation_batch_start, on_validation_end

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()
