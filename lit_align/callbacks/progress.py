"""Progress on screen: a rich bar in a terminal, plain lines everywhere else (CI, nohup, SLURM logs).

Lightning's rich bar draws nothing until the end when stdout is not a terminal, so a long run looked hung.
`default_progress_bar()` picks:

- in a terminal, `RichProgress`: Lightning's RichProgressBar counting to where this epoch really stops
  (`max_steps` can end it early: "20/20", not "20/1500"), without the `v_num` entry;
- otherwise `PlainProgress`: one line every `every_n_steps` optimizer steps (by default about 20 lines a
  run), at the first step and at the last, and one line per validation:

      step 120/250  train/loss 0.5321  2.41 it/s  elapsed 0:00:50  ETA 0:00:54
      validation at step 250: val/loss 0.1093  val/token_accuracy 0.9611

it/s counts optimizer steps per second since the run (or the resumed run) started, validation included, so
the ETA is what the wall clock will show.

The model summary at the start of fit follows the same choice (`plain_model_summary`): Lightning's rich table in a
terminal; otherwise one line, `model: 250 K parameters (125 K trainable, 1.0 MB)`, instead of a 20-line box-drawn
table that ends in "Total FLOPs: 0" (Lightning counts FLOPs only for a module given an example input).
"""

from __future__ import annotations

import datetime
import sys
import time

from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichModelSummary, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count


def _without_version(metrics: dict) -> dict:
    metrics = dict(metrics)
    metrics.pop("v_num", None)
    return metrics


class RichProgress(RichProgressBar):
    @property
    def total_train_batches(self):
        total = super().total_train_batches
        trainer = self.trainer
        if trainer.max_steps is None or trainer.max_steps < 0 or not isinstance(total, (int, float)):
            return total
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready  # batches of this epoch already run
        left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return min(total, done + left)

    def get_metrics(self, trainer, pl_module):
        return _without_version(super().get_metrics(trainer, pl_module))


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def _values(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


class PlainProgress(ProgressBar):
    # the headline metrics of each validation set (all of them are in TensorBoard)
    VALIDATION_SHOWN = ("/loss", "/token_accuracy", "/rewards/accuracy", "/rewards/ranking_accuracy", "/logps/accuracy",
                        "/ab/p_match", "/reward")

    def __init__(self, every_n_steps: int | None = None, stream=None):
        """
        Args:
            every_n_steps: a line every this many optimizer steps; None: about 20 lines in the run.
            stream: where the lines go (default: stdout).
        """
        super().__init__()
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._start = 0.0
        self._first_step = 0
        self._total = 0
        self._printed_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _print(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._first_step = time.monotonic(), trainer.global_step
        self._total = int(trainer.estimated_stepping_batches) if trainer.max_steps != 0 else 0
        if trainer.max_steps is not None and trainer.max_steps > 0:
            self._total = min(self._total, trainer.max_steps) if self._total > 0 else trainer.max_steps
        self._printed_step = -1

    def _every(self) -> int:
        if self.every_n_steps:
            return self.every_n_steps
        return max(1, round(self._total / 20)) if self._total > 0 else 10

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.is_enabled or step == self._printed_step or step == self._first_step:
            return  # (within gradient accumulation the step has not moved)
        done = step - self._first_step
        if not (done == 1 or step % self._every() == 0 or step >= self._total > 0):
            return
        self._printed_step = step
        elapsed = time.monotonic() - self._start
        rate = done / elapsed if elapsed > 0 else float("nan")
        metrics = {k: v for k, v in _without_version(self.get_metrics(trainer, pl_module)).items()
                   if not k.startswith("val")}
        total = f"/{self._total}" if self._total > 0 else ""
        eta = f"  ETA {_clock((self._total - step) / rate)}" if self._total > 0 and rate > 0 else ""
        self._print(f"step {step}{total}  {_values(metrics)}  {rate:.3g} it/s  elapsed {_clock(elapsed)}{eta}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self.is_enabled or trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items()
                   if k.startswith("val") and k.endswith(self.VALIDATION_SHOWN)}
        shown = {k: float(v) for k, v in sorted(metrics.items()) if getattr(v, "numel", lambda: 1)() == 1}
        where = f"at step {trainer.global_step}" if trainer.state.fn == "fit" else "of the checkpoint"
        self._print(f"validation {where}: {_values(shown)}")


def default_progress_bar() -> ProgressBar:
    """A rich bar in a terminal, plain lines otherwise."""
    return RichProgress(leave=True) if sys.stdout.isatty() else PlainProgress()


class OneLineSummary(ModelSummary):
    """Lightning's model summary as one line (its FLOPs only when counted)."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict, total_flops: int, **summarize_kwargs) -> None:
        flops = f", {get_human_readable_count(total_flops)} FLOPs" if total_flops else ""
        rank_zero_info(f"model: {get_human_readable_count(total_parameters).strip()} parameters "
                       f"({get_human_readable_count(trainable_parameters).strip()} trainable, "
                       f"{get_formatted_model_size(model_size)} MB{flops})")


def plain_model_summary(trainer):
    """Without a terminal, `trainer`'s rich model summary (Lightning's default one) becomes `OneLineSummary`."""
    if not sys.stdout.isatty():
        trainer.callbacks[:] = [OneLineSummary(max_depth=cb._max_depth) if type(cb) is RichModelSummary else cb
                                for cb in trainer.callbacks]
    return trainer
