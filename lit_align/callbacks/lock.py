"""One run at a time per experiment: a lock in the experiment's checkpoint directory.

Two `lit_align fit` runs with the same experiment name share logs/<experiment>/checkpoints/: their saves
collide and last.ckpt ends up belonging to either, so a later `--ckpt_path last` resumes the other run. So
`fit` (rank 0) takes an exclusive lock on `checkpoints/.lock` before it touches the directory and holds it
until the run ends. The kernel's lock (flock) is what excludes; the file's contents name the holder (pid,
host, start time, command) for the error a second run gets. The lock goes with its process, whatever ends it
(kill -9, a crash, a power cut): a file still naming a holder while nobody holds the lock was left by a run that
is gone, and is taken over with a warning. On a file system without locks (some network mounts) the run goes
on with a warning, unprotected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time

from lightning.pytorch.utilities import rank_zero_warn

from lit_align.errors import LitAlignError

LOCK_NAME = ".lock"


def describe(holder: dict | None) -> str:
    if not holder:
        return "a run that is starting (its lock file is still empty)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            f" ({holder.get('command', '?')})")


class ExperimentLock:
    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.path = os.path.join(dirpath, LOCK_NAME)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict | None:
        """Who the lock file names (None: nobody, or unreadable)."""
        try:
            with open(self.path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock, or raise LitAlignError naming the run that holds it."""
        if self.held:
            return
        os.makedirs(self.dirpath, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                rank_zero_warn(f"cannot lock {self.path} ({e.strerror or e}): this run is not protected against "
                               "another run of the same experiment")
                return
            raise LitAlignError(
                f"the experiment in {self.dirpath} is in use by another run: {describe(self.holder())}. Wait for it "
                "to end or stop it, or give this run another experiment name (--trainer.logger.init_args.name NAME)."
                f" (lock: {self.path})") from None
        left = self.holder()
        if left:
            rank_zero_warn(f"taking over the lock of the experiment in {self.dirpath}: it names {describe(left)}, "
                           "which is no longer running (killed or crashed)")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": " ".join(["lit_align", *sys.argv[1:]])[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty file: nobody holds it (the file stays: removing it would race)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "ExperimentLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
