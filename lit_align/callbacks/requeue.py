"""SLURM preemption: on the requeue signal, checkpoint at the next optimizer step, requeue the job, stop.

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
Outside SLURM (or with `requeue.enabled: false`) this callback does nothing.
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


class Requeued(Exception):
    """Raised on every rank after the preemption checkpoint was written and the requeue requested."""

    def __init__(self, checkpoint: str, job_id: str | None, requeued: bool):
        self.checkpoint, self.job_id, self.requeued = checkpoint, job_id, requeued
        what = f"job {job_id} requeued" if requeued else "requeue not requested"
        super().__init__(f"preempted: checkpoint written to {checkpoint}; {what}")


def slurm_job_id() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(Callback):
    def __init__(self, enabled: bool = True, signal: str = "SIGUSR1", requeue: bool = True):
        """
        Args:
            enabled: handle the signal under SLURM (false: Lightning's defaults apply).
            signal: the signal SLURM sends before the end (`#SBATCH --signal=USR1@<seconds>`).
            requeue: run `scontrol requeue` after the checkpoint (false: only checkpoint and stop).
        """
        self.enabled, self.signal_name, self.requeue = enabled, signal, requeue
        self.requested = False
        self._active = False
        self._previous_handler = None

    @property
    def signum(self) -> signal.Signals:
        return signal.Signals[self.signal_name if self.signal_name.startswith("SIG") else "SIG" + self.signal_name]

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not self.enabled or not SLURMEnvironment.detect():
            return
        env = getattr(trainer._accelerator_connector, "cluster_environment", None)
        if isinstance(env, SLURMEnvironment) and env.auto_requeue:
            env.auto_requeue = False  # see the module docstring
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("SLURM requeue: not in the main thread, cannot install a signal handler")
            return
        self._previous_handler = signal.signal(self.signum, self._on_signal)
        self._active = True
        rank_zero_info(f"SLURM job {slurm_job_id()}: on {self.signum.name}, checkpoint at the next step and "
                       f"{'requeue' if self.requeue else 'stop'}")

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._active:
            signal.signal(self.signum, self._previous_handler or signal.SIG_DFL)
            self._active = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._active:
            return
        at_step_end = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or \
            trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if not at_step_end:
            return
        flag = torch.tensor(float(self.requested), device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="sum")
        if flag.item() == 0:
            return
        path = self._checkpoint(trainer)
        job_id = slurm_job_id()
        requeued = False
        if trainer.is_global_zero and self.requeue:
            requeued = self._scontrol_requeue(job_id)
        trainer.strategy.barrier("SlurmRequeue")
        raise Requeued(path, job_id, requeued if trainer.is_global_zero else self.requeue)

    @staticmethod
    def _checkpoint(trainer) -> str:
        from lit_align.callbacks.checkpoint import RunCheckpoint

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
