"""The lit_align cache folder (`LIT_ALIGN_CACHE`, default ~/.cache/lit_align) and the temporaries written in it.

Built or converted models are written under a temporary name beside their final folder and renamed when whole.
A temporary names its process (`.<name>.tmp.<pid>@<host>.<random>`), so a later build can remove the leftovers of
a killed one (its process is gone on this host) and leave a live one's alone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("LIT_ALIGN_CACHE") or Path.home() / ".cache" / "lit_align")


_TEMPORARY = re.compile(r"\.tmp\.(\d+)@([^.]+)\.")
_UNNAMED_TEMPORARY = re.compile(r"^\.[\w-]+-[0-9a-f]{12}\.[a-z0-9_]{8}$")
"""mkdtemp's names before temporaries named their process (`.organism-<digest>.<random>`)."""
UNNAMED_STALE_AFTER_S = 24 * 3600
"""An unnamed temporary this old is a killed build's: a build takes minutes (half an hour on a loaded machine)."""


def _host() -> str:
    return socket.gethostname().split(".")[0] or "localhost"  # (a dot would end the name's host part)


def temporary_prefix(base: str) -> str:
    """This process's prefix for a temporary beside `base` (mkdtemp / mkstemp add a random tail): the pid and host
    let a later build tell a killed build's leftovers from a live build's."""
    return f".{base}.tmp.{os.getpid()}@{_host()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stale(entry: Path) -> bool:
    named = _TEMPORARY.search(entry.name)
    if named:  # another host's pid says nothing here (a cache shared over NFS)
        return named[2] == _host() and not _alive(int(named[1]))
    if _UNNAMED_TEMPORARY.match(entry.name):
        try:
            return time.time() - entry.stat().st_mtime > UNNAMED_STALE_AFTER_S
        except OSError:  # removed meanwhile
            return False
    return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries in `folder` left by builds that were killed (their process is gone); return them."""
    if not folder.is_dir():
        return []
    stale = [e for e in folder.iterdir() if e.name.startswith(".") and _stale(e)]
    for entry in stale:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return stale
