"""What to do when an optimizer step's loss or gradients are NaN or inf.

The objective (objectives/base.py) detects it once per optimizer step, from the loss summed over every
accumulated micro-batch and every device and from the gradients of every rank (the same all-reduce that
normalises the loss, one extra number), so every rank takes the same decision. It then asks this callback:

    action: skip   the step is skipped: gradients are dropped before the optimizer runs, so weights and
                   optimizer state (AdamW moments, step count) are untouched; the step still counts
                   (global_step, the learning-rate schedule and the data move on). Each skip is printed and
                   counted (`train/nonfinite_skipped` in TensorBoard, kept in checkpoints); more than
                   `max_consecutive` skips in a row stop the run (it has diverged). A run that ends having
                   skipped more than `max_skipped_share` of its optimizer steps (default 0.5: more than half;
                   counted over every step since the run began, resumes included) trained too little to be
                   trusted: it fails at its end (exit 2, before the final model is exported) rather than exit 0.
    action: stop   the run stops at once with an error naming the step; no checkpoint is written after it.

With 16-mixed precision, inf gradients are the loss scaler's business (it skips the step and lowers the
scale), so only a non-finite loss counts there. Independently, a checkpoint whose weights hold NaN or inf
is never written (callbacks/checkpoint.py).
"""

from __future__ import annotations

from typing import Literal

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lit_align.errors import LitAlignError


class NonFiniteGuard(Callback):
    def __init__(self, action: Literal["skip", "stop"] = "skip", max_consecutive: int = 10, max_skipped_share: float = 0.5):
        """
        Args:
            action: skip (drop the step's gradients, count it, go on) or stop (end the run with an error).
            max_consecutive: with skip: stop after this many non-finite steps in a row.
            max_skipped_share: with skip: a run that skipped more than this share of its optimizer steps fails
                at its end, before the export (1: never).
        """
        if action not in ("skip", "stop"):
            raise LitAlignError(f"nonfinite.action must be skip or stop, not '{action}'")
        if max_consecutive < 1:
            raise LitAlignError(f"nonfinite.max_consecutive must be >= 1, not {max_consecutive}")
        if isinstance(max_skipped_share, bool) or not 0 <= max_skipped_share <= 1:
            raise LitAlignError(f"nonfinite.max_skipped_share must be in [0, 1], not {max_skipped_share!r}")
        self.action, self.max_consecutive, self.max_skipped_share = action, max_consecutive, max_skipped_share
        self.skipped = 0
        self.consecutive = 0
        self.steps: list[int] = []  # the global steps skipped (the first few hundred)

    def on_nonfinite_step(self, trainer, pl_module, what: str) -> None:
        """Called by the objective on every rank with the same `what`; returns to skip, raises to stop."""
        step = trainer.global_step
        if self.action == "stop":
            raise LitAlignError(f"non-finite {what} at optimizer step {step} (epoch {trainer.current_epoch}); stopping "
                                "(nonfinite.action: stop). No checkpoint was written after this step. Lower the "
                                "learning rate, clip gradients (trainer.gradient_clip_val), check the data, or set "
                                "nonfinite.action: skip to skip such steps.")
        self.skipped += 1
        self.consecutive += 1
        if len(self.steps) < 256:
            self.steps.append(step)
        if self.consecutive > self.max_consecutive:
            raise LitAlignError(f"non-finite {what} in {self.consecutive} optimizer steps in a row (the last at step "
                                f"{step}); the run has diverged, stopping (nonfinite.max_consecutive: "
                                f"{self.max_consecutive}). Lower the learning rate or clip gradients.")
        rank_zero_warn(f"non-finite {what} at optimizer step {step}: step skipped (weights and optimizer state "
                       f"unchanged; {self.skipped} skipped so far)")
        pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False, rank_zero_only=True)

    def on_finite_step(self) -> None:
        self.consecutive = 0

    def on_train_end(self, trainer, pl_module) -> None:
        # (on_train_end comes before on_fit_end, where ExportHF writes the final model: none is exported)
        problem = too_many_skipped(self.skipped, trainer.global_step, self.max_skipped_share)
        if problem:
            raise LitAlignError(problem)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive, "steps": list(self.steps)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.steps = list(state_dict.get("steps", []))


def too_many_skipped(skipped: int, steps: int, max_share: float) -> str | None:
    """Why a run that skipped `skipped` of its `steps` optimizer steps as non-finite must not end as a success
    (None: it may). Skipped steps count in global_step, so both numbers cover the whole run, resumes included."""
    if steps <= 0 or skipped <= max_share * steps:
        return None
    return (f"{skipped} of the run's {steps} optimizer steps were skipped as non-finite (more than "
            f"nonfinite.max_skipped_share {max_share:g}), so the model has barely trained and is not exported: check "
            "the data (e.g. huge weights), lower the learning rate or clip gradients (trainer.gradient_clip_val).")
