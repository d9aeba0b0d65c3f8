"""Measuring a row: step-end times, tokens and peak memory (Meter), and each row in a fresh forked process."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
import traceback
from pathlib import Path

import torch


class Meter:
    """Step-end timestamps and real tokens per step; peak memory above the level when `start()` ran."""

    def __init__(self, device: str):
        self.device, self.ends, self.tokens = device, [], []
        self.real, self.slots = [], []  # real tokens and token slots (real + padding) of the model inputs
        self.samples, self.completion_tokens, self.sampling_s = [], [], []  # online RL: per step's rollout

    def padding(self) -> float:
        return 1 - sum(self.real) / sum(self.slots) if self.slots else float("nan")

    def start(self, *models: torch.nn.Module) -> None:
        """The baseline, with `models` (the policy, a reference) resident in it."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # transformers maps a checkpoint's weights from the file and reads them at first use, so without this
            # the weights (540 MB for a 135 M fp32 model) would count as memory the first step used
            with torch.no_grad():
                for m in models:
                    for t in (*m.parameters(), *m.buffers()):
                        t.sum()
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
            self.base = _status_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        return self.peak_total_mb() - self.base / 2 ** 20

    def peak_total_mb(self) -> float:
        """The peak itself: torch.cuda.max_memory_allocated (model and reference included), or peak RSS."""
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2 ** 20
        return _status_kb("VmHWM") * 1024 / 2 ** 20

    def step_end(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def result(self, warmup: int) -> dict:
        gaps = [b - a for a, b in zip(self.ends[warmup:], self.ends[warmup + 1:])]
        toks = self.tokens[warmup + 1: warmup + 1 + len(gaps)]
        step = statistics.median(gaps)
        out = {"step_s": step, "tokens_per_s": sum(toks) / sum(gaps), "peak_mb": self.peak_mb(),
               "peak_total_mb": self.peak_total_mb(), "tokens_per_step": statistics.mean(toks),
               "padding": self.padding()}
        if self.samples:  # online RL: completions per second, sampling time, completion length
            timed = slice(warmup + 1, warmup + 1 + len(gaps))
            samples = self.samples[timed]
            out.update(samples_per_s=sum(samples) / sum(gaps), samples_per_step=statistics.mean(samples),
                       sampling_s=statistics.median(self.sampling_s[timed]),
                       completion_length=sum(self.completion_tokens[timed]) / sum(samples))
        return out

    def rollout(self, prompt_tokens: int, completion_lengths: list[int], seconds: float) -> None:
        """One step's samples (online RL): real prompt tokens (once per completion), each completion's length, and
        the time spent sampling them."""
        self.tokens.append(prompt_tokens + sum(completion_lengths))
        self.samples.append(len(completion_lengths))
        self.completion_tokens.append(sum(completion_lengths))
        self.sampling_s.append(seconds)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def sequence_tokens(batch: dict) -> int:
    """Real tokens of the sequences of a lit_align batch: prompt + continuation per row, whatever the layout."""
    if "context_mask" in batch:  # shared-context layout: each context counts once per continuation
        return int(batch["context_mask"].sum()) * batch["num_continuations"] + int(batch["attention_mask"].sum())
    if "token_mask" in batch:    # packed layout: the context is in the row once
        return int(batch["token_mask"].sum()) + int(batch["context_tokens"].sum()) * (batch["num_continuations"] - 1)
    return int(batch["attention_mask"].sum())


def _slots(batch: dict) -> int:
    """Token slots of a lit_align batch's model inputs (real + padding), whatever the layout."""
    if "token_mask" in batch:
        return batch["token_mask"].numel()
    return batch["attention_mask"].numel() + (batch["context_mask"].numel() if "context_mask" in batch else 0)



# -- running each row in a fresh process --------------------------------------------------------------------


def _child(fn, queue, threads, log, *a):
    try:
        if not os.environ.get("BENCH_VERBOSE"):  # the libraries' banners and progress bars; errors come back below
            out = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(out, 1)
            os.dup2(out, 2)
        torch.set_num_threads(threads)
        queue.put(("ok", fn(*a)))
    except BaseException:  # report, don't hang the parent
        queue.put(("error", traceback.format_exc()))


def in_fresh_process(fn, threads: int, *a, timeout: float | None = None, log: str | None = None):
    """Run fn(*a) in a forked child with `threads` torch threads (fresh peak-memory counter, nothing left
    over from earlier rows) and return its result. The child's output goes to the file `log` (appended), or
    nowhere. A child still running after `timeout` seconds is killed (TimeoutError); one that dies without
    answering (a crash, the OOM killer) or raises is a RuntimeError holding its traceback. The parent must
    not have initialised CUDA (a forked child could not use it)."""
    import queue as queues

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, queue, threads, log) + a)
    proc.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            status, value = queue.get(timeout=1.0)
            break
        except queues.Empty:
            if not proc.is_alive():
                try:  # its answer may have reached the pipe just as it exited
                    status, value = queue.get(timeout=1.0)
                    break
                except queues.Empty:
                    raise RuntimeError(f"the child process died (exit code {proc.exitcode}) without answering") \
                        from None
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                proc.join()
                raise TimeoutError(f"killed after {timeout:.0f} s") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(value)
    return value

