"""The steering / model-organism experiment: which method gives the organism (builtin:organism, data/organism.py)
a disposition it lacks (the sweet food, p_match ≈ 0.13 at the start), how many pairs it needs, whether the change
reaches new foods and phrasings (ood) and open-ended answers without letters (open), and what it costs the
capability (task accuracy). The methods, sizes and seeds are the sweep configs/sweeps/organism.yaml: CAA, SFT,
CAA on top of SFT, IW-SFT (loss and resample), DPO and online RL (GRPO, budgeted in reward queries) at
n ∈ {8, 32, 128, 512} training pairs (labels) x 3 seeds.

    python scripts/organism_experiment.py                    # every run here (~30 min on 2 CPU cores), then:
        logs/experiments/organism/{results.csv, organism.png, table.md}   (over builds x seeds)
        logs/experiments/organism/<build>/{runs/, results.csv, organism.png, table.md}   (each build's own)
    python scripts/organism_experiment.py --seeds 0 1 2      # 3 builds x 3 training seeds (~1.5 h)
    python scripts/organism_experiment.py --quick            # n ∈ {8, 32}, one build, one seed (a smoke test)
    python scripts/organism_experiment.py --slurm            # SLURM job arrays instead (then --collect)
    python scripts/organism_experiment.py --collect          # the CSV, figure and table from finished runs
    python scripts/organism_experiment.py --jobs 2           # two runs at a time, 1 thread each (not timed yet)

The organism's pretraining seed is a source of variance like the training seed: another build of the same recipe
(another pretraining seed, or the same seed on another CPU) is another organism, and published findings of one
build did not hold on another. So the experiment runs every method on several builds (`--builds`, default the
three of BUILDS: builtin:organism, builtin:organism-seed1, -seed2; one training seed each by default) and its
table and figure take means and bands over builds x seeds; each build's own table sits in its folder, with the
weights digest it came from, so a finding can be checked build by build.

Runs that finished are reused (a rerun after a crash or preemption redoes only the others). Each run goes through
the package's own code: LitAlignCLI for the objectives, lit_align.steering.vectors for CAA (lit_align/steering/caa.py), the same
evaluation sets and metric names for all. The organism is built on first use (~3 minutes, cached).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lit_align.errors import LitAlignError
from lit_align.sweep.engine import Sweep, noise_level
from lit_align.sweep.side_by_side import jobs_count, run_sweeps
from lit_align.layouts import LAYOUTS

REPO = Path(__file__).resolve().parents[1]  # experiments/ lives in the repository, never installed
CONFIG = REPO / "configs" / "sweeps" / "organism.yaml"
QUICK = {"sizes": [8, 32], "seeds": [0]}
BUILDS = (0, 1, 2)
"""The organism builds the experiment runs on by default (pretraining seeds; build_name gives the model)."""
BUILD_SEEDS = [0]
"""Training seeds per build by default (builds x seeds: the default grid keeps the one-build grid's run count)."""
COLUMNS = (("val_id/ab/p_match", "ID p_match"), ("val_ood/ab/p_match", "OOD p_match"),
           ("val_open/logps/accuracy", "open: log-prob match"), ("val_open/gen/match", "open: generation match"),
           ("val_task/logps/accuracy", "task accuracy"))


def start_model(sweep: Sweep):
    """(model, tokenizer): the policy of the sweep's base config, as every method starts from it, in eval mode."""
    from lit_align.modeling.models import load_model, load_tokenizer, policy_spec

    spec = policy_spec(sweep.spec.base)
    tokenizer = load_tokenizer(spec)
    return load_model(spec, tokenizer).eval(), tokenizer


def start_metrics(sweep: Sweep) -> dict[str, float]:
    """The starting model's metrics (no training, no steering) on the sweep's evaluation and generation sets,
    under the same names; computed once into <out>/start.json."""
    import json

    from lit_align.data.datamodule import AlignDataModule
    from lit_align.steering.caa import pair_set_metrics

    path = sweep.out / "start.json"
    if path.exists():
        return json.loads(path.read_text())
    base = sweep.spec.base
    model, tokenizer = start_model(sweep)
    args = dict((base.get("data") or {}).get("init_args") or {})
    args["train"] = {**(args.get("train") if isinstance(args.get("train"), dict) else {"path": args.get("train")}),
                     "limit": 1}
    dm = AlignDataModule(**args)
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    metrics = pair_set_metrics(model, dm)
    metrics.update(sweep._generation_metrics(model, dm))
    sweep.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1))
    return metrics


def build_line(sweep: Sweep) -> str:
    """For a built-in pretrained start model (the organism): which build the numbers came from, as a line for the
    table and as <out>/start_model.json (recipe digest, weights sha256, final loss). The same recipe pretrains
    different weights on another CPU, so results are comparable only between equal weights digests."""
    import json

    from lit_align.builtin.pretrain import build_info
    from lit_align.modeling.models import policy_spec

    info = build_info(policy_spec(sweep.spec.base).name)
    if info is None:
        return ""
    (sweep.out / "start_model.json").write_text(json.dumps(info, indent=1))
    return (f"\nStart model: {info['model']}, recipe {info['recipe']}, weights sha256 {info['weights_sha256'][:12]}, "
            f"final pretraining loss {info['final_loss']:.5f} (yours: `lit_align` prints them when it builds the "
            f"model; also in {info['path']}/recipe.json).\n")


def build_name(seed: int) -> str:
    """The built-in organism of pretraining seed `seed` (lit_align/builtin/pretrain.py BUILTIN_PRETRAINED)."""
    return "builtin:organism" if seed == 0 else f"builtin:organism-seed{seed}"


def with_start(rows: list[dict], start: dict[str, float]) -> list[dict]:
    """`rows` plus the starting model at every training-set size and noise level (a flat line in each panel)."""
    sizes = sorted({int(r["size"]) for r in rows})
    levels = sorted({noise_level(r) for r in rows})
    return [{"run": f"start-n{n}" + (f"-noise{f:g}" if f else ""), "objective": "start", "size": n, "seed": 0,
             "noise": f, "flipped": 0, "train_examples": n, "labels": n, **start}
            for f in levels for n in sizes] + rows


def table(rows: list[dict], columns: tuple = COLUMNS, repeats: str = "seeds") -> str:
    """Markdown: per method and n, the mean over its rows (seeds; builds x seeds) of each column (± half their
    range); `columns`: (result key, heading) pairs; `repeats`: the heading of the row-count column. Rows at
    several label-noise levels (or at one above 0) get one block per level."""
    levels = sorted({noise_level(r) for r in rows})
    if levels in ([], [0.0]):
        return _table_block(rows, columns, repeats)
    blocks = []
    for f in levels:
        said = ("no labels flipped" if f == 0 else f"the labels of {f:.0%} of the training pairs flipped (online RL: "
                f"each reward turned over with probability {f:g})")
        blocks.append(f"**label noise {f:g}**: {said}\n\n" + _table_block([r for r in rows if noise_level(r) == f],
                                                                           columns, repeats))
    return "\n".join(blocks)


def _table_block(rows: list[dict], columns: tuple, repeats: str = "seeds") -> str:
    """table()'s markdown for rows of one noise level."""
    lines = ["| method | n (pairs; online RL: reward queries) | " + " | ".join(c for _, c in columns)
             + f" | {repeats} |",
             "|---|---|" + "---|" * len(columns) + "---|"]
    methods = list(dict.fromkeys(r["objective"] for r in rows))
    for m in methods:
        for n in sorted({int(r["size"]) for r in rows if r["objective"] == m}):
            cell = [r for r in rows if r["objective"] == m and int(r["size"]) == n]
            values = []
            for key, _ in columns:
                v = [float(r[key]) for r in cell if r.get(key) not in (None, "")]
                values.append("" if not v else f"{sum(v) / len(v):.2f}" +
                              (f" ± {(max(v) - min(v)) / 2:.2f}" if len(v) > 1 else ""))
            lines.append(f"| {m} | {n} | " + " | ".join(values) + f" | {len(cell)} |")
            if m == "start":
                lines[-1] = lines[-1].replace(f"| start | {n} |", "| start (no training) | any |")
                break
    return "\n".join(lines) + "\n"


def write_results(sweep: Sweep, columns: tuple = COLUMNS, heading: str = "", footer: str = "") -> Path:
    """The sweep's finished runs and the start model: results.csv and the figure (sweep.collect), and table.md."""
    rows = with_start(sweep.results(), start_metrics(sweep))
    sweep.collect(rows)
    md = sweep.out / "table.md"
    md.write_text(heading + table(rows, columns) + footer + build_line(sweep))
    print(f"wrote {md}\n\n{md.read_text()}", flush=True)
    return md


def write_combined(sweeps: dict[str, Sweep], out: Path, config: str, overrides: dict,
                   columns: tuple = COLUMNS) -> Path:
    """Over several builds (`sweeps`: build model name -> its sweep, finished runs written): <out>/results.csv
    (every run and each build's start model, with a `build` column), the figure and table.md, means and bands
    over builds x seeds, each build's weights digest under the table."""
    rows, lines = [], []
    for name, sweep in sweeps.items():
        rows += [{**r, "build": name} for r in with_start(sweep.results(), start_metrics(sweep))]
        lines.append(build_line(sweep).strip())
    seeds = len(next(iter(sweeps.values())).spec.seeds)
    repeats = f"{len(sweeps)} builds x {seeds} seed{'s' if seeds > 1 else ''}"
    combined = Sweep(config, {**overrides, "out": str(out)})
    combined.collect(rows, repeats=repeats)
    md = out / "table.md"
    md.write_text(f"Means over {repeats} (± half their range); each build's own table: "
                  f"{', '.join(str(Path(s.out.name) / 'table.md') for s in sweeps.values())}.\n\n"
                  + table(rows, columns, repeats="builds x seeds") + "\n" + "\n".join(lines) + "\n")
    print(f"wrote {md}\n\n{md.read_text()}", flush=True)
    return md


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/organism_experiment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n in {8, 32}, one build, one seed")
    parser.add_argument("--builds", type=int, nargs="+",
                        help=f"the organism builds (pretraining seeds) to run on (default: {' '.join(map(str, BUILDS))})")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds per build (default: 0)")
    parser.add_argument("--out", help="output directory (default: the sweep's, logs/experiments/organism)")
    parser.add_argument("--policy", help="another starting model for every method (e.g. builtin:tiny in tests), "
                                         "instead of the organism builds")
    parser.add_argument("--slurm", action="store_true", help="write SLURM job arrays (+ submit.sh) instead of running")
    parser.add_argument("--collect", action="store_true", help="only the CSV, figure and table from finished runs")
    parser.add_argument("--config", default=str(CONFIG), help="the sweep file (default: configs/sweeps/organism.yaml)")
    parser.add_argument("--jobs", type=jobs_count, default=1,
                        help="runs at once, each in its own process with cores/jobs threads (lit_align/sweep/"
                             "side_by_side.py; e.g. 2 on 2 cores); default 1: one after another in this process")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if not Path(args.config).is_file():
            raise LitAlignError(f"{args.config} is missing: run the experiment from a checkout of the repository")
        from lit_align.config import deep_merge, read_yaml

        spec = read_yaml(args.config)
        overrides = dict(QUICK) if args.quick else {"seeds": BUILD_SEEDS}
        if args.seeds:
            overrides["seeds"] = args.seeds
        out = Path(args.out or spec["out"])
        builds = args.builds or ([0] if args.quick else list(BUILDS))
        policies = [args.policy] if args.policy else [build_name(b) for b in builds]
        sweeps = {}
        for policy in policies:  # an override of `base`, so that SLURM tasks get it too
            base = deep_merge(spec.get("base") or {}, {"model": {"init_args": {"policy": {"name": policy}}}})
            sweep = Sweep(args.config, {**overrides, "base": base, "out": str(out / policy.split(":")[-1])})
            sweeps[policy] = sweep
            if args.slurm:
                sbatch, submit = sweep.write_slurm()
                print(f"wrote {sbatch} ({len(sweep.runs)} array tasks) and {submit}\nsubmit with: bash {submit}",
                      flush=True)
                continue
            print(f"== {policy}: {len(sweep.runs)} runs -> {sweep.out}", flush=True)
            if not args.collect:
                from lit_align.modeling.models import resolve_name

                # build a built-in pretrained model here, with its progress on screen, not inside the first run's log
                resolve_name(policy)
        if not args.slurm:
            if not args.collect:
                run_sweeps(sweeps.values(), args.jobs)   # (jobs > 1: every build's runs in one queue)
            for sweep in sweeps.values():
                write_results(sweep)
        if args.slurm:
            print("afterwards: python scripts/organism_experiment.py --collect (with the same --builds/--seeds)")
            return
        write_combined(sweeps, out, args.config, overrides)
    except LitAlignError as e:
        print(f"\norganism experiment: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
