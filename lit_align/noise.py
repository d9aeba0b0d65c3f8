"""Messages that tell a lit_align user nothing, silenced once when the CLI starts (every rank imports it).

- Lightning's "Tip: ... try installing litlogger" (an advertisement, on every run);
- "Found N module(s) in eval mode at the start of training": the frozen reference model and LoRA's frozen base
  are in eval mode on purpose;
- "Checkpoint directory ... exists and is not empty": one checkpoint directory per experiment, shared by its
  runs, is the design (callbacks/checkpoint.py);
- "`isinstance(treespec, LeafSpec)` is deprecated" (Lightning's own use of a torch API, once per process);
- "Loading `train_dataloader` to estimate number of stepping batches" (Lightning's note to itself);
- transformers' "Writing model shards" bar when a model is saved (`no_save_bar`: it printed inside the run's
  own progress display).
Everything else Lightning, torch and transformers say is left as it is; but when stderr is no terminal (CI, nohup,
SLURM logs) a warning is one line, `lit_align: warning: <message> (<category>)`, not Python's two (the file and
line, then the source line that raised it, e.g. `rank_zero_warn(f"sample generations took ...`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

_WARNINGS = (r"Found \d+ module\(s\) in eval mode", r"Checkpoint directory .* exists and is not empty",
             r".*isinstance\(treespec, LeafSpec\)")
_LOG_LINES = ("💡 Tip: For seamless cloud", "Loading `train_dataloader` to estimate number of stepping batches")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LOG_LINES)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """warnings.formatwarning for logs: the message on one line and its category, without the source line."""
    return f"lit_align: warning: {' '.join(str(message).split())} ({category.__name__})\n"


def silence() -> None:
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if not sys.stderr.isatty():  # (in a terminal the file and source line help; in a log they are noise)
        warnings.formatwarning = one_line_warning
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropLines) for f in handler.filters):
                handler.addFilter(_DropLines())


@contextlib.contextmanager
def no_save_bar():
    """transformers' progress bars off for the duration (then as they were)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
