"""Validate at the end of fit, unless the last step just did: every val curve ends at the run's last step.

Lightning validates every `val_check_interval` batches (or at an epoch's end); a run that stops on max_steps
between two checks (a short `--trainer.max_steps 30`, a resume that ends mid-interval) would end with no
validation of its final weights, and every val curve would stop short of the end. Lightning validates at once
when `trainer.should_stop` is set after a batch (its early-stopping path, `_should_check_val_fx`): this callback
sets it after the run's last optimizer step, which ends the run there anyway. The fit loop runs that validation
only when the step was not already a validation step, so nothing is evaluated twice; the last.ckpt written after
it (RunCheckpoint) is then the final one.
"""

from __future__ import annotations

from lightning.pytorch import Callback


class FinalValidation(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.should_stop or not trainer.enable_validation:
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop._should_accumulate():  # inside gradient accumulation: not a step's end
            return
        last_step = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
        last_epoch = (epoch_loop.batch_progress.is_last_batch and trainer.max_epochs is not None
                      and 0 <= trainer.max_epochs <= trainer.current_epoch + 1)
        if last_step or last_epoch:
            trainer.should_stop = True
