"""A rank that stops waiting for the others ends the run with one sentence, and no process is left behind.

Under DDP / FSDP every optimizer step holds collectives (the gradient all-reduce, the global target count of
objectives/base.py, metric syncs, checkpoint barriers). A rank that is stopped (SIGSTOP, Ctrl-Z, a debugger), hung
(a dead file system) or gone without its process group noticing makes the others block in the next one. The
process group's timeout ends that wait: `trainer.strategy.init_args.timeout` (a duration such as `0:30:00`,
Lightning's default 30 minutes; configs/strategies/*.yaml set it) makes gloo raise "Timed out waiting N ms ..." in
the waiting rank. This module turns that into one sentence (the CLI prints it, exit 1), skips the
checkpoint-on-exception (it would wait in a collective again), and on rank 0 kills the ranks it launched (a
stopped process would otherwise stay behind for ever). NCCL's watchdog aborts the process itself on a timeout
(TORCH_NCCL_ASYNC_ERROR_HANDLING), with its own message, before anything here runs.
"""

from __future__ import annotations

import os
import re

import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from lit_align.errors import exception_chain

_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_WAITED_MS = re.compile(r"waiting (\d+)\s*ms", re.IGNORECASE)


def collective_timeout(exc: BaseException) -> str | None:
    """One sentence if `exc` (or an exception it came from) is a collective that timed out in this process, else
    None."""
    for e in exception_chain(exc):
        if isinstance(e, RuntimeError) and _TIMED_OUT.search(str(e)) and (
                isinstance(e, getattr(torch.distributed, "DistError", ())) or "gloo" in str(e) or "c10d" in str(e).lower()
                or "collective" in str(e).lower()):
            break
    else:
        return None
    waited = _WAITED_MS.search(str(e))
    waited = f"{int(waited.group(1)) / 1000:g} s" if waited else "the process group's timeout"
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    ended = ("the ranks this process launched are ended" if str(rank) == "0" else
             "end a stopped rank 0 yourself: kill -9 <its pid>")
    return (f"rank {rank} of {world} waited {waited} in a collective operation (gradient all-reduce, metric sync or "
            "checkpoint barrier) for the other ranks, which did not arrive: one of them is stopped, hung or gone. "
            f"The run stops here ({ended}); resume with --ckpt_path last. If a rank "
            "is legitimately slow (a long export, reference cache or first step on one rank), raise "
            f"trainer.strategy.init_args.timeout (a duration such as 1:00:00). ({str(e).strip().splitlines()[-1]})")


class CollectiveTimeout(Callback):
    """On a collective timeout, rank 0 ends the ranks it launched (Lightning's subprocess launcher)."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if collective_timeout(exception) is None:
            return
        launcher = trainer.strategy.launcher
        if trainer.is_global_zero and isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(9)  # SIGKILL: a stopped process ignores everything else until it is continued
