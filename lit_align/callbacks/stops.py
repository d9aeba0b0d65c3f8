"""How a run that was stopped on purpose ends: the exceptions raised on every rank once its checkpoint is written
(callbacks/requeue.py raises them; RunCheckpoint does not save again for them; the CLI prints them, exit 0 / 128 + n).
"""

from __future__ import annotations

import signal


class Requeued(Exception):
    """Raised on every rank after the preemption checkpoint was written and the requeue requested."""

    def __init__(self, checkpoint: str, job_id: str | None, requeued: bool):
        self.checkpoint, self.job_id, self.requeued = checkpoint, job_id, requeued
        what = f"job {job_id} requeued" if requeued else "requeue not requested"
        super().__init__(f"preempted: checkpoint written to {checkpoint}; {what}")


class Interrupted(Exception):
    """Raised on every rank after SIGTERM / SIGINT, once the current step is finished and last.ckpt written."""

    def __init__(self, checkpoint: str, step: int, signum: int, rank_zero: bool = True):
        self.checkpoint, self.step, self.signum, self.rank_zero = checkpoint, step, signum, rank_zero
        super().__init__(f"{signal.Signals(signum).name}: interrupted at step {step}; resume with --ckpt_path last "
                         f"(checkpoint: {checkpoint})")
