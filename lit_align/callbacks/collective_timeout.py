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
_WAITED = re.compile(r"waiting (\d+)\s*ms|after (\d+) seconds", re.IGNORECASE)  # gloo's op; the store at start-up


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
    waited = _WAITED.search(str(e))
    if waited:
        waited = f"{int(waited[1]) / 1000:g} s" if waited[1] else f"{waited[2]} s"
    else:
        waited = "the process group's timeout"
    cause = str(e).strip().splitlines()[-1]
    raise_it = "raise trainer.strategy.init_args.timeout (a duration such as 1:00:00)"
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        # the process group was never set up: the wait was for the others to join it (a rank still importing on
        # a loaded machine, or one that died or stopped while starting), not in a training collective
        return (f"{_this_rank()} waited {waited} for the other ranks to join the process group at start-up, and they "
                "did not all arrive: one of them is stopped, hung, gone, or still starting (importing and loading "
                f"can take minutes on a loaded machine). The run stops here ({_ended(_rank())}); to give the ranks "
                f"longer to start, {raise_it}. ({cause})")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return (f"rank {rank} of {world} waited {waited} in a collective operation (gradient all-reduce, metric sync or "
            "checkpoint barrier) for the other ranks, which did not arrive: one of them is stopped, hung or gone. "
            f"The run stops here ({_ended(rank)}); resume with --ckpt_path last. If a rank is legitimately slow (a "
            f"long export, reference cache or first step on one rank), {raise_it}. ({cause})")


def _rank() -> int | None:
    """This process's global rank before the process group exists: RANK (torchrun, SLURM through Lightning), or on
    one node LOCAL_RANK (Lightning's launcher sets only LOCAL_RANK, NODE_RANK and WORLD_SIZE); None: unknown."""
    if os.environ.get("RANK", "").isdigit():
        return int(os.environ["RANK"])
    if os.environ.get("NODE_RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "").isdigit():
        return int(os.environ["LOCAL_RANK"])
    return None


def _this_rank() -> str:
    rank, world = _rank(), os.environ.get("WORLD_SIZE")
    if rank is None:
        return "this process (its rank is not known: the process group was not set up yet)"
    return f"rank {rank}" + (f" of {world}" if world else "")


def _ended(rank: int | None) -> str:
    if rank == 0:  # CollectiveTimeout (below) kills the ranks Lightning's launcher started from rank 0
        return "the ranks this process launched are ended"
    if rank is None:
        return "end any rank left running yourself: kill -9 <its pid>"
    return "end a stopped rank 0 yourself: kill -9 <its pid>"


class CollectiveTimeout(Callback):
    """On a collective timeout, rank 0 ends the ranks it launched (Lightning's subprocess launcher)."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if collective_timeout(exception) is None:
            return
        launcher = trainer.strategy.launcher
        if trainer.is_global_zero and isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(9)  # SIGKILL: a stopped process ignores everything else until it is continued
