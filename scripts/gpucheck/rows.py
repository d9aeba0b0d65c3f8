"""One row of the check: run in a forked child within its time limits (run_row), how it went (Outcome), the
clock that holds a section's deadline and prints progress, and the short texts of table cells (last_line, fmt)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

import bench
from gpucheck.settings import Settings


@dataclass
class Outcome:
    """How one row went: ok (with its values), skipped (why), failed (the error's last line) or timed out."""

    status: str
    values: dict = field(default_factory=dict)
    why: str = ""

    def cell(self) -> str:
        """What a table shows in place of the row's numbers when it has none."""
        return {"skipped": f"skipped ({self.why})", "failed": f"failed: {self.why}",
                "timed out": f"timed out ({self.why})"}.get(self.status, "")


class Clock:
    """Elapsed seconds since the start, a deadline per section, and one progress line per row."""

    def __init__(self):
        self.start = time.monotonic()
        self.deadline = float("inf")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)


def last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = (lines[-1] if lines else str(text)).replace("|", "/")  # (it goes in a table cell)
    return (line[:300] + "...") if len(line) > 300 else line


def run_row(label: str, clock: Clock, settings: Settings, log: str, fn, *a, skip: str | None = None) -> Outcome:
    """fn(*a) -> dict in a forked child, within the row limit and what is left of the section's budget."""
    if skip:
        clock.say(f"{label}: skipped ({skip})")
        return Outcome("skipped", why=skip)
    if torch.cuda.is_initialized():  # a bug of this script: say so rather than fail in every child
        return Outcome("failed", why="CUDA was initialised in the parent process: forked rows cannot use it")
    limit = min(settings.row_limit, clock.left())
    if limit < 3:
        clock.say(f"{label}: skipped (section time budget spent)")
        return Outcome("skipped", why="section time budget spent")
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n===== {label} =====\n")
    try:
        values = bench.in_fresh_process(fn, settings.threads, *a, timeout=limit, log=log)
    except TimeoutError as e:
        clock.say(f"{label}: timed out ({e})")
        return Outcome("timed out", why=str(e))
    except Exception as e:  # the child's traceback (or how it died): its last line goes in the report
        clock.say(f"{label}: failed: {last_line(e)}")
        return Outcome("failed", why=last_line(e))
    values["wall_s"] = time.monotonic() - t0
    clock.say(f"{label}: ok ({values['wall_s']:.1f} s){_summary(values)}")
    return Outcome("ok", values)


def _summary(values: dict) -> str:
    if "tokens_per_s" in values:
        return f", {values['step_s'] * 1e3:.0f} ms/step, {values['tokens_per_s']:.0f} tokens/s"
    return f", {values['result']}" if "result" in values else ""


def fmt(x: float) -> str:
    """A difference or a tolerance, short."""
    return "0" if x == 0 else f"{x:.1e}"
