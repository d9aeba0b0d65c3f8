"""Checkpoints in one place per experiment, so `--ckpt_path last` finds the previous run's last.ckpt.

Lightning's default puts checkpoints under the logger's versioned directory (logs/<exp>/version_N/),
so a new run (version N+1) cannot find the last checkpoint of the run it should resume. Here the default
directory is logs/<exp>/checkpoints/, shared by all versions of the experiment.

Lightning writes last.ckpt after validation or at an epoch's end; a run that stops on max_steps
mid-epoch would leave its final steps unsaved, so last.ckpt is also written when training ends.
"""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    def __init__(self, save_last: bool = True, every_n_train_steps: int | None = None, **kwargs):
        super().__init__(save_last=save_last, every_n_train_steps=every_n_train_steps, **kwargs)

    def _default_dirpath(self, trainer) -> None:
        if self.dirpath is None and trainer.loggers and trainer.loggers[0].save_dir is not None:
            logger = trainer.loggers[0]
            self.dirpath = os.path.join(logger.save_dir, str(logger.name), "checkpoints")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer) -> set[str]:
        self._default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and not trainer.interrupted and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
