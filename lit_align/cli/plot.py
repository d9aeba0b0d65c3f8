"""`python scripts/plot_probes.py LABEL=RUN ... -o probes.png`: the command's parsing; the figures are
lit_align/plots.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_align.plots import plot_probes


def main(argv: list[str] | None = None) -> None:
    """Command line of scripts/plot_probes.py."""
    parser = argparse.ArgumentParser(
        description="TensorBoard probe curves -> a PNG grid (one panel per probe category, one line per run).")
    parser.add_argument("runs", nargs="+", help="LABEL=PATH (an event file or a log directory), or PATH")
    parser.add_argument("-o", "--out", default="probes.png", help="the PNG to write")
    parser.add_argument("--sets", nargs="*", help="probe sets to draw (default: all)")
    parser.add_argument("--categories", nargs="*", help="categories to draw, in this order (default: all)")
    parser.add_argument("--per-token", action="store_true", help="mean per-token log-prob (probe_token/...)")
    parser.add_argument("--delta", action="store_true", help="change since the first probe")
    parser.add_argument("--ncols", type=int, default=4)
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    runs = {}
    for r in args.runs:
        label, _, path = r.partition("=") if "=" in r else (Path(r).name, "", r)
        runs[label] = path
    out = plot_probes(runs, args.out, sets=args.sets, categories=args.categories, per_token=args.per_token,
                      delta=args.delta, ncols=args.ncols, title=args.title)
    print(f"wrote {out}")
