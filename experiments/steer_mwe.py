"""CAA's own experiment on a real chat model: `lit_align steer` on Anthropic's model-written evals (the behaviours of
Rimsky et al. 2024, shared under ../shared/data/model-written-evals/), a layer sweep x multipliers per behaviour.

For each behaviour: a mean-difference vector from `--pairs` contrast pairs (rows 200.. of the lm file, written by a
model), read at the answer letter; evaluated with positions after_prompt on the first `--items` rows of the lm file
(ID: the distribution the vector came from) and of the human file (OOD: questions people wrote about the same
behaviour), at every layer of `--layers` and multiplier of `--multipliers`. Then, over all behaviours:

    <out>/<behaviour>/      lit_align steer's outputs (vector, steer.csv, steer_summary.csv/.md, steer.png)
    <out>/results.csv       every (behaviour, set, layer, multiplier): p_match, match_rate, margin, n
    <out>/summary.csv       every (behaviour, set, layer): p_match at 0 and at the ends, steerability, anti-steerable
    <out>/table.md          per behaviour at its best layer (the highest ID steerability): ID and OOD
    <out>/steer_mwe.png     p_match against the layer (at the largest and smallest multiplier, ID) and against the
                            multiplier at each behaviour's best layer (ID and OOD)

    python scripts/steer_mwe_experiment.py             # SmolLM2-135M-Instruct (bash scripts/setup.sh real), 5 behaviours
    python scripts/steer_mwe_experiment.py --quick     # 2 behaviours, 8 items, 2 layers (a smoke test)

A behaviour whose steer.csv exists is reused (a rerun after an interruption redoes only the others). The best layer
is chosen on the ID items themselves, as in Rimsky et al.'s layer sweeps: its ID numbers are optimistic; OOD's are not
selected on.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from lit_align.errors import LitAlignError

REPO = Path(__file__).resolve().parents[1]  # experiments/ lives in the repository, never installed
DATA = REPO.parent / "shared" / "data" / "model-written-evals"
BEHAVIOURS = ("corrigible-neutral-HHH", "myopic-reward", "power-seeking-inclination", "survival-instinct",
              "wealth-seeking-inclination")
POLICY = "builtin:smollm2-135m-instruct"
DEFAULTS = {"layers": list(range(0, 30, 4)), "multipliers": [-8.0, -4.0, 0.0, 4.0, 8.0], "items": 40, "pairs": 64}
QUICK = {"behaviours": list(BEHAVIOURS[:2]), "layers": [0, 1], "multipliers": [-4.0, 0.0, 4.0], "items": 8, "pairs": 8}
SETS = {"lm": "ID", "human": "OOD"}


def steer_config(behaviour: str, policy: str, out: Path, layers: list[int], multipliers: list[float], items: int,
                 pairs: int) -> dict:
    """The `lit_align steer` config of one behaviour (as cli/steer.py's parse_args gives it)."""
    lm, human = DATA / "lm" / f"{behaviour}.jsonl", DATA / "human" / f"{behaviour}.jsonl"
    return {
        "_files": [__file__],
        "model": {"class_path": "lit_align.objectives.SFT", "init_args": {"policy": {"name": policy}}},
        "data": {"class_path": "lit_align.data.AlignDataModule", "init_args": {
            "train": {"path": str(lm), "skip": 200, "limit": pairs},
            "val": {"lm": {"path": str(lm), "limit": items}, "human": {"path": str(human), "limit": items}},
            "eval_batch_size": 16, "max_length": 512}},
        "steer": {"layers": layers, "multipliers": multipliers, "positions": "after_prompt", "method": "mean_diff",
                  "read": "answer", "out": str(out), "name": behaviour},
    }


def _read(path: Path, behaviour: str) -> list[dict]:
    with open(path) as f:
        return [{"behaviour": behaviour, **row} for row in csv.DictReader(f)]


def best_layers(summary: list[dict]) -> dict[str, str]:
    """behaviour -> the layer with the highest mean steerability slope on the ID set."""
    best = {}
    for b in dict.fromkeys(r["behaviour"] for r in summary):
        rows = [r for r in summary if r["behaviour"] == b and r["set"] == "lm"]
        best[b] = max(rows, key=lambda r: float(r["steerability"]))["layer"]
    return best


def table(summary: list[dict], best: dict[str, str]) -> str:
    """Markdown: per behaviour at its best layer, ID and OOD: p_match at the smallest / zero / largest multiplier,
    the steerability slope (per unit of multiplier, in nats of log π(m) − log π(n)) and the anti-steerable share."""
    lines = ["| behaviour | layer | set | p_match (min m) | p_match (m=0) | p_match (max m) | steerability | "
             "anti-steerable | n |", "|---|---|---|---|---|---|---|---|---|"]
    for b, layer in best.items():
        for s, label in SETS.items():
            r = next(r for r in summary if r["behaviour"] == b and r["set"] == s and r["layer"] == layer)
            lines.append(f"| {b} | {layer} | {label} | {float(r['p_match_m_min']):.3f} | {float(r['p_match_0']):.3f} | "
                         f"{float(r['p_match_m_max']):.3f} | {float(r['steerability']):+.4f} | "
                         f"{float(r['anti_steerable']):.2f} | {r['n']} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/steer_mwe_experiment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 behaviours, 8 items, 2 layers, 3 multipliers")
    parser.add_argument("--out", default="logs/experiments/steer_mwe", help="the output folder")
    parser.add_argument("--policy", default=POLICY, help=f"the model (default {POLICY})")
    parser.add_argument("--behaviours", nargs="+", choices=BEHAVIOURS, help="default: all five")
    parser.add_argument("--layers", type=int, nargs="+", help=f"default: {DEFAULTS['layers']}")
    parser.add_argument("--multipliers", type=float, nargs="+", help=f"default: {DEFAULTS['multipliers']}")
    parser.add_argument("--items", type=int, help=f"ID and OOD items per behaviour (default {DEFAULTS['items']})")
    parser.add_argument("--pairs", type=int, help=f"contrast pairs the vector comes from (default {DEFAULTS['pairs']})")
    args = parser.parse_args(argv)
    grid = {**DEFAULTS, "behaviours": list(BEHAVIOURS), **(QUICK if args.quick else {})}
    grid.update({k: v for k, v in vars(args).items() if k in grid and v is not None})
    from lit_align.cli.steer import run_steer
    from lit_align.plots import plot_steering_behaviours

    out = Path(args.out)
    try:
        if not DATA.is_dir():
            raise LitAlignError(f"{DATA} is missing: the model-written evals are read from ../shared/data beside the "
                                "repository")
        results, summary = [], []
        for i, b in enumerate(grid["behaviours"]):
            folder = out / b
            if (folder / "steer_summary.csv").exists():
                print(f"[{i + 1}/{len(grid['behaviours'])}] {b}: done already", flush=True)
            else:
                started = time.time()
                print(f"[{i + 1}/{len(grid['behaviours'])}] {b}: {len(grid['layers'])} layers x "
                      f"{len(grid['multipliers'])} multipliers on {grid['items']} ID + {grid['items']} OOD items",
                      flush=True)
                run_steer(steer_config(b, args.policy, folder, grid["layers"], grid["multipliers"], grid["items"],
                                       grid["pairs"]))
                print(f"    {b}: {time.time() - started:.0f} s", flush=True)
            results += _read(folder / "steer.csv", b)
            summary += _read(folder / "steer_summary.csv", b)
        best = best_layers(summary)
        _write_csv(out / "results.csv", results)
        _write_csv(out / "summary.csv", summary)
        (out / "table.md").write_text(table(summary, best))
        plot_steering_behaviours(results, best, out / "steer_mwe.png", title=f"CAA on model-written evals: "
                                 f"{args.policy}, {grid['pairs']} pairs per vector")
        print(f"wrote {out}/results.csv, summary.csv, steer_mwe.png, table.md\n\n{(out / 'table.md').read_text()}",
              flush=True)
    except LitAlignError as e:
        print(f"\nsteer_mwe experiment: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
