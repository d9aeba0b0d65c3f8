"""Sweep runs side by side on one machine: `jobs` processes at once, each running one run
(`python -m lit_align.sweep run SWEEP --index i`, the command of a SLURM array task) with torch's threads split
among them.

On a few CPU cores a run of a small model leaves cores idle: its matrices are small, and its Python (the loop,
hooks, item-by-item steering grids) runs on one core. Two 1-thread runs side by side got more done than the same
runs one after another with 2 threads each (on 2 cores, the SmolLM2 method comparison: 629 s against 757 s for the
same two runs, with the same numbers to the last digit shown). The runs may come from several sweeps (e.g. one
sweep per behaviour), so that no core waits for the last run of one sweep before the next sweep starts.

    run_side_by_side([(sweep, run), ...], jobs=2)
    run_sweeps([sweep, ...], jobs)                 # every run of these sweeps: side by side, or in turn (jobs 1)
    parser.add_argument("--jobs", type=jobs_count, ...)   # a count of at least 1, else argparse's error

Runs start largest training set first (the longest, so that the last ones to finish are short), several sweeps'
runs taking turns; a run whose
result exists is skipped (as in run_all). A failed run does not stop the others; once all have ended, the failures
are raised in one error naming each run's log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from lit_align.errors import LitAlignError


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def jobs_count(text: str) -> int:
    """argparse type of a --jobs option: an integer of at least 1."""
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text}")
    return jobs


def run_sweeps(sweeps, jobs: int) -> None:
    """Every unfinished run of `sweeps`: `jobs` > 1 at once in one queue (no core waits for one sweep's last run
    before the next sweep starts), else each sweep's in turn in this process."""
    sweeps = list(sweeps)
    if jobs > 1:
        run_side_by_side([(s, r) for s in sweeps for r in s.runs], jobs)
    else:
        for sweep in sweeps:
            sweep.run_all()


def run_side_by_side(work: list, jobs: int) -> None:
    """Run each (sweep, run) of `work` not finished yet in its own process, `jobs` at a time."""
    todo = [(s, r) for s, r in work if not s.result_path(r).exists()]
    for s, r in work:
        if s.result_path(r).exists():
            print(f"{s.out.name}/{r.name}: done already", flush=True)
    # the longest first; runs of several sweeps interleaved, so that two runs side by side seldom compute the same
    # reference log-probs cache (same data) at once
    todo.sort(key=lambda sr: (-sr[1].size, sr[1].index))
    threads = str(max(1, cores() // max(1, jobs)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    running: list[tuple] = []                               # (process, sweep, run, start time)
    failed: list[str] = []
    start, done = time.perf_counter(), 0
    try:
        while todo or running:
            while todo and len(running) < jobs:
                s, r = todo.pop(0)
                cmd = [sys.executable, "-m", "lit_align.sweep", "run", str(s.path), *s.override_args(), "--index",
                       str(r.index)]
                # the child prints its result as JSON (read from result.json instead); its output is in the run's log
                running.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL), s, r, time.perf_counter()))
            time.sleep(0.5)
            for item in [x for x in running if x[0].poll() is not None]:
                p, s, r, t = item
                running.remove(item)
                done += 1
                label, where = f"{s.out.name}/{r.name}", s.out / "runs" / r.name / "log.txt"
                if p.returncode != 0 or not s.result_path(r).exists():
                    failed.append(f"{label} (exit {p.returncode}; its log: {where})")
                    print(f"{label}: FAILED, exit {p.returncode} (log: {where})", flush=True)
                    continue
                print(f"{label}: {time.perf_counter() - t:.0f} s ({done} ended, {len(todo)} to start, "
                      f"{len(running)} running; {threads} thread{'s' * (threads != '1')} each)", flush=True)
    finally:  # interrupted (Ctrl-C, an error here): no run goes on without us; the next call redoes them
        for p, *_ in running:
            p.terminate()
        for p, *_ in running:
            p.wait()
    print(f"side by side: {done} runs in {time.perf_counter() - start:.0f} s, {jobs} at a time", flush=True)
    if failed:
        raise LitAlignError(f"{len(failed)} run{'s' * (len(failed) > 1)} failed: " + "; ".join(failed))
