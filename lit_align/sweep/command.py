"""`python -m lit_align.sweep run|collect|slurm|list SWEEP.yaml` (and scripts/sweep.py): the sweep command's
parsing; the sweep itself is lit_align/sweep/engine.py."""

from __future__ import annotations

import json
import os
import sys

from lit_align.errors import LitAlignError
from lit_align.sweep import engine
from lit_align.sweep.engine import Sweep
from lit_align.sweep.side_by_side import jobs_count


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lit_align.sweep", description=engine.__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "collect", "slurm", "list"])
    parser.add_argument("sweep", help="the sweep YAML")
    parser.add_argument("--index", type=int, help="run: only this run (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--subprocess", action="store_true", help="run: each run in its own process")
    parser.add_argument("--jobs", type=jobs_count, default=1,
                        help="run: this many runs at once, each in its own process with cores/jobs threads")
    parser.add_argument("--verbose", action="store_true", help="run: show each run's output instead of logging it")
    parser.add_argument("--out", help="override the sweep's output directory")
    parser.add_argument("--overrides", type=json.loads, default={},
                        help="top-level sweep keys replaced, as JSON (what a sweep hands to its subprocesses and "
                             "SLURM tasks), e.g. '{\"sizes\": [8], \"seeds\": [0]}'")
    parser.add_argument("--python", help="slurm: the Python interpreter of the jobs (default: this one)")
    parser.add_argument("--workdir", help="slurm: the jobs' working directory (default: here)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        sweep = Sweep(args.sweep, {**args.overrides, **({"out": args.out} if args.out else {})})
        if args.command == "list":
            for r in sweep.runs:
                done = "done" if sweep.result_path(r).exists() else ""
                print(f"{r.index:4d}  {r.name}  {done}")
        elif args.command == "run" and args.index is not None:
            if not 0 <= args.index < len(sweep.runs):
                raise LitAlignError(f"--index {args.index}: the sweep has runs 0..{len(sweep.runs) - 1}")
            result = sweep.run_one(sweep.runs[args.index], quiet=not args.verbose)
            print(json.dumps(result), flush=True)
        elif args.command == "run":
            sweep.run_all(subprocess=args.subprocess, jobs=args.jobs)
            sweep.collect()
        elif args.command == "collect":
            sweep.collect()
        else:
            sbatch, submit = sweep.write_slurm(args.python, args.workdir)
            print(f"wrote {sbatch} ({len(sweep.runs)} array tasks) and {submit}\nsubmit with: bash {submit}")
    except LitAlignError as e:
        print(f"\nlit_align.sweep: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
