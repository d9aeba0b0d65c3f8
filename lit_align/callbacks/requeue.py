"""Signals: SLURM preemption (checkpoint at the next optimizer step, requeue the job, stop) and SIGTERM / SIGINT
(Ctrl-C) in any run (checkpoint at the next optimizer step, stop with exit status 128 + signal number).

SLURM sends the signal before the time limit (`#SBATCH --signal=USR1@90`, see scripts/slurm/fit.sbatch)
or before a preemption. Then, on every rank:

1. the signal handler only sets a flag (nothing else is safe inside a signal handler);
2. at the next optimizer-step boundary (never inside gradient accumulation), the ranks agree through one
   tiny all-reduce (a signal can reach them at different times), write last.ckpt through RunCheckpoint
   (atomic, with the sampler position and RNG states, so the resumed run continues exactly);
3. rank 0 runs `scontrol requeue <job id>` (array jobs: `<array job id>_<task id>`);
4. the run ends (exit status 0, no final export): SLURM starts the job again under the same job id with
   SLURM_RESTART_COUNT >= 1, and the sbatch script then passes `--ckpt_path last`.

Lightning's SLURMEnvironment stays the cluster environment (ranks, world size and the main address come
from srun's variables), but its own auto-requeue handler is switched off here, deliberately: it saves
`hpc_ckpt_N.ckpt` from inside the signal handler — in the middle of a step (optimizer state half updated,
gradients half accumulated) and with a barrier that can deadlock DDP when the ranks are inside a collective —
into the working directory rather than the experiment's, and then keeps training until it is killed.
Outside SLURM (or with `requeue.enabled: false`) there is no requeue.

SIGTERM (`kill`, `scancel`, a container stop) and SIGINT (Ctrl-C) take the same path in every `fit` (with
`requeue.interrupt: true`, the default): the handler sets a flag, the current optimizer step is finished,
last.ckpt is written atomically, and the run stops with `Interrupted` (the CLI prints "interrupted at step N;
resume with --ckpt_path last" and exits 130 for SIGINT, 143 for SIGTERM). The resumed run continues exactly.
A second signal of either kind that arrives before that checkpoint is written stops at once, without it
(KeyboardInterrupt, exit status 1; the previous checkpoint stays the newest, and the partial file of an interrupted
write is removed by the next run); once it is written, a second signal changes nothing (the run ends as after one). Lightning's own SIGTERM
handler is not installed: it ends the run at the end of any batch (inside gradient accumulation too) with exit
status 0 and no checkpoint, and under DDP broadcasts from inside the signal handler.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_align.callbacks.checkpoint import RunCheckpoint
from lit_align.callbacks.stops import Interrupted, Requeued  # noqa: F401 (the CLI catches them)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def slurm_job_id() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(Callback):
    def __init__(self, enabled: bool = True, signal: str = "SIGUSR1", requeue: bool = True, interrupt: bool = True):
        """
        Args:
            enabled: handle the signal under SLURM (false: no requeue).
            signal: the signal SLURM sends before the end (`#SBATCH --signal=USR1@<seconds>`).
            requeue: run `scontrol requeue` after the checkpoint (false: only checkpoint and stop).
            interrupt: on SIGTERM or SIGINT, finish the step, write last.ckpt and stop (exit 128 + signal number);
                false: Lightning's defaults apply.
        """
        self.enabled, self.signal_name, self.requeue, self.interrupt = enabled, signal, requeue, interrupt
        self.requested = False
        self.stop_signal: int | None = None
        self.stop_checkpoint: str | None = None  # written for the stop signal: a second signal then changes nothing
        self._previous: dict[int, object] = {}
        self._rank_zero = True

    @property
    def signum(self) -> signal.Signals:
        return signal.Signals[self.signal_name if self.signal_name.startswith("SIG") else "SIG" + self.signal_name]

    @property
    def _active(self) -> bool:
        return bool(self._previous)

    def _install(self, signum: int, handler) -> None:
        previous = signal.signal(signum, handler)
        self._previous.setdefault(signum, previous)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        slurm = self.enabled and SLURMEnvironment.detect()
        if not slurm and not self.interrupt:
            return
        if slurm:
            env = getattr(trainer._accelerator_connector, "cluster_environment", None)
            if isinstance(env, SLURMEnvironment) and env.auto_requeue:
                env.auto_requeue = False  # see the module docstring
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("not in the main thread, cannot install signal handlers (SIGTERM/SIGINT/SLURM requeue)")
            return
        self.requested, self.stop_signal, self.stop_checkpoint = False, None, None
        self._rank_zero = trainer.is_global_zero
        if self.interrupt:
            for signum in STOP_SIGNALS:
                self._install(signum, self._on_stop_signal)
            # Lightning installs its SIGTERM handler later in fit (wrapping this one): see the module docstring
            trainer._signal_connector.register_signal_handlers = lambda: None
        if slurm:
            self._install(self.signum, self._on_signal)
            rank_zero_info(f"SLURM job {slurm_job_id()}: on {self.signum.name}, checkpoint at the next step and "
                           f"{'requeue' if self.requeue else 'stop'}")

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def _on_stop_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None and self.stop_checkpoint is not None:
            return  # the first one's checkpoint is written: the run is already ending with it
        if self.stop_signal is not None:  # the second one, before the checkpoint is written: stop now, without it
            self._restore()
            raise KeyboardInterrupt(f"{name} received twice: stopping without a checkpoint")
        self.stop_signal = signum
        if self._rank_zero:
            os.write(2, f"\nlit_align: {name} received: stopping after the current optimizer step, with a checkpoint "
                        f"(send it again to stop at once, without one)\n".encode())

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._active:
            return
        at_step_end = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or \
            trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if at_step_end:
            self._stop_if_signalled(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """A signal during the validation of a fit does not wait for the end of a long evaluation (SLURM's grace
        time may be shorter): the step before it is finished, so the run stops at once with that step's
        checkpoint; this validation's results are not logged, and the resumed run does not repeat it."""
        if self._active and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_signalled(trainer, in_validation=True)

    def _stop_if_signalled(self, trainer, in_validation: bool = False) -> None:
        """At an optimizer-step boundary: if any rank got a signal, checkpoint and stop (every rank)."""
        flags = torch.tensor([float(self.requested), float(self.stop_signal or 0)], device=trainer.strategy.root_device)
        if trainer.world_size > 1:  # a signal can reach the ranks at different times (or only one of them)
            flags = trainer.strategy.reduce(flags, reduce_op="max")
        requested, stop_signal = (int(v) for v in flags.tolist())
        if not requested and not stop_signal:
            return
        if in_validation:
            # the checkpoint of a validation that ended (Lightning's usual last.ckpt point): the resumed run goes
            # on training, with the training RNG state of before the validation (RunCheckpoint)
            trainer.fit_loop.epoch_loop.val_loop.increment_progress_to_evaluation_end()
            rank_zero_info(f"stopping during the validation after step {trainer.global_step} (not logged)")
        if not requested:
            if not in_validation and trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
                return  # the last step: the run ends normally (final checkpoint and export)
            path = self.stop_checkpoint = self._checkpoint(trainer)
            if not in_validation:
                self._log_this_step(trainer)
            trainer.strategy.barrier("SlurmRequeue.interrupt")
            raise Interrupted(path, trainer.global_step, stop_signal, trainer.is_global_zero)
        path = self._checkpoint(trainer)
        if not in_validation:
            self._log_this_step(trainer)
        job_id = slurm_job_id()
        requeued = False
        if trainer.is_global_zero and self.requeue:
            requeued = self._scontrol_requeue(job_id)
        trainer.strategy.barrier("SlurmRequeue")
        raise Requeued(path, job_id, requeued if trainer.is_global_zero else self.requeue)

    @staticmethod
    def _log_this_step(trainer) -> None:
        """Send this step's logged values to the loggers (Lightning does it after the on_train_batch_end hooks,
        which the exception raised here skips), so that the last finished step keeps its train/loss."""
        connector = trainer._logger_connector
        connector.on_batch_end()
        connector.update_train_step_metrics()

    @staticmethod
    def _checkpoint(trainer) -> str:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, RunCheckpoint):
                return cb.save_last_now(trainer)
        path = os.path.join(trainer.default_root_dir, "preempted.ckpt")
        trainer.save_checkpoint(path)
        return path

    @staticmethod
    def _scontrol_requeue(job_id: str | None) -> bool:
        if not job_id or not re.fullmatch(r"[0-9_]+", job_id):
            rank_zero_warn(f"SLURM requeue: no usable job id ({job_id!r}); not requeued")
            return False
        try:
            result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            rank_zero_warn(f"SLURM requeue: `scontrol requeue {job_id}` failed: {e}")
            return False
        if result.returncode != 0:
            rank_zero_warn(f"SLURM requeue: `scontrol requeue {job_id}` exited with {result.returncode}: "
                           f"{result.stderr.strip()}")
            return False
        rank_zero_info(f"SLURM job {job_id} requeued")
        return True
