"""The A/B bias experiment: from a starting model biased toward one answer letter, which objective teaches
the right answers best, above all on the items whose right answer the starting model disfavoured?

    .venv/bin/python scripts/ab_experiment.py                 # everything, then prints the markdown table
    .venv/bin/python scripts/ab_experiment.py --seeds 0 --steps 60 --methods sft iw_sft_loss --out logs/ab_small

1. Warm-up (configs/experiments/ab_warmup.yaml): SFT of builtin:small on the built-in A/B questions (builtin:ab)
   always answering " (A)": a starting model that puts almost all its mass on (A).
2. From that model, with the same data (builtin:ab train: the matching answer is the right one, (A) or (B) at
   random), the same steps, learning rate and batch size, one run per method and seed
   (configs/experiments/ab_*.yaml):
     sft                SFT on the matching answer
     iw_sft_loss        importance-reweighted SFT, weights π_start(answer|question)^(-1) (α = 1), mode loss
     iw_sft_resample    the same weights, mode resample
     dpo                DPO on (matching, not matching), reference = the starting model
     iw_sft_refresh     iw_sft_loss with the weights recomputed from the current policy every 20 steps
     iw_sft_lengthnorm  iw_sft_loss with per-token (length-normalised) weights (not run by default)
3. Each final model (and the starting one) is scored on the held-out in-distribution questions (builtin:ab
   split id: "Is a greater than b?", numbers 0-49) and the out-of-distribution ones (split ood: "Which is
   smaller, a or b?", numbers 50-99): the behaviour-match rate, log π(matching) > log π(not matching), over
   all items, over the items the STARTING model got wrong (it preferred the not-matching answer: the
   "disfavoured" targets) and over the others ("favoured"); the mean log-odds of the right answer on the
   disfavoured items; and the item AUC (does the model tell (A)-questions from (B)-questions at all, apart
   from a preference for one letter: 0.5 = no).

Every run goes through the package's CLI (LitAlignCLI, in this process) with the YAML written next to its
logs (<out>/configs/: configs/experiments/<method>.yaml with this experiment's paths, seed and steps); the
scoring uses the data module, logprobs.py and reference.policy_split_logps. Results: <out>/results.json and
<out>/table.md. Finished runs (an exported model) are reused: delete <out> to start over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from lit_align.config import read_yaml, set_dotted
from lit_align.layouts import LAYOUTS

METHODS = {
    "sft": ("ab_sft.yaml", "SFT"),
    "iw_sft_loss": ("ab_iw_sft.yaml", "IW-SFT, loss (α=1)"),
    "iw_sft_resample": ("ab_iw_sft_resample.yaml", "IW-SFT, resample (α=1)"),
    "dpo": ("ab_dpo.yaml", "DPO (β=0.1)"),
    "iw_sft_refresh": ("ab_iw_sft_refresh.yaml", "IW-SFT, loss, refreshed every 20 steps"),
    "iw_sft_lengthnorm": ("ab_iw_sft_lengthnorm.yaml", "IW-SFT, loss, per-token (length-normalised)"),
}
DEFAULT_METHODS = ["sft", "iw_sft_loss", "iw_sft_resample", "dpo", "iw_sft_refresh"]
REPO = Path(__file__).resolve().parents[1]  # experiments/ lives in the repository, never installed
CONFIGS = REPO / "configs" / "experiments"
EVAL_SETS = {"id": "val_id", "ood": "val_ood"}


def _config(name: str, out: Path, run: str, overrides: dict) -> Path:
    """The YAML of one run: configs/experiments/<name> with this experiment's paths and `overrides`."""
    cfg = read_yaml(CONFIGS / name)
    set_dotted(cfg, "trainer.logger.init_args.save_dir", str(out / "runs"))
    set_dotted(cfg, "trainer.logger.init_args.name", run)
    set_dotted(cfg, "trainer.logger.init_args.version", 0)
    set_dotted(cfg, "checkpoint", {"save_last": False, "save_top_k": 0})
    set_dotted(cfg, "data.init_args.val", {})   # the final models are scored below; no validation (nor its cache) here
    if "reference" in cfg["model"].get("init_args", {}):
        set_dotted(cfg, "model.init_args.reference.cache_dir", str(out / "reference_cache"))
    for key, value in overrides.items():
        set_dotted(cfg, key, value)
    path = out / "configs" / f"{run}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def _fit(config: Path, log: Path, verbose: bool) -> None:
    """`lit_align fit --config <config>` in this process (its output to `log` unless verbose)."""
    from lit_align.lightning_cli import run_in_process

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        run_in_process(config, None if verbose else f)
    if not verbose:
        import rich

        rich.reconfigure(quiet=True)  # the progress bar reconfigured rich's console; keep later bars quiet


def write_biased_data(path: Path, n: int = 2000, seed: int = 1) -> Path:
    """{prompt: question, completion: " (A)"} for `n` A/B training questions (another seed than the main set)."""
    from lit_align.data.synthetic import builtin_records

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in builtin_records("ab", "train", n, seed=seed):
            f.write(json.dumps({"prompt": r["question"], "completion": " (A)"}) + "\n")
    return path


def score(model_dir: Path, n_eval: int) -> dict[str, dict]:
    """Per item of each evaluation set: log π(matching), log π(not matching), and whether matching is (A)."""
    import torch

    from lit_align.data import AlignDataModule
    from lit_align.lightning_cli import output_to
    from lit_align.modeling.logprobs import sequence_logps
    from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer
    from lit_align.objectives.reference import policy_split_logps

    spec = ModelSpec(name=str(model_dir))
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer).eval()
    dm = AlignDataModule(val={s: {"path": "builtin:ab", "split": s, "limit": n_eval, "kind": "pair"} for s in EVAL_SETS},
                         eval_batch_size=100, max_length=96)
    dm.connect(tokenizer, LAYOUTS["pair"])
    with open(os.devnull, "w") as null, output_to(null):
        dm.setup("validate")
    out = {}
    for s, split in EVAL_SETS.items():
        logps, _ = policy_split_logps(model, sequence_logps, dm, split)            # (n, 2): matching, not
        matching_is_a = torch.tensor(["(A)" in tokenizer.decode(ex.continuations[0])
                                      for ex in dm.splits[split].examples])
        out[s] = {"logps": logps, "matching_is_a": matching_is_a}
    return out


def _auc(score, label) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2: 0.5 = the score says nothing."""
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return (greater + 0.5 * ties).item()


def rates(scores: dict, start: dict) -> dict[str, float]:
    """Per evaluation set: the behaviour-match rate over all items, over the items the starting model got
    wrong ("disfavoured": it preferred the not-matching answer) and over the others ("favoured"); the mean
    log-odds log π(matching) - log π(not matching) on the disfavoured items; and the item AUC: how well
    log π(A) - log π(B) separates the questions whose right answer is (A) from those whose is (B), which a
    model that only has a letter preference, however strong, scores 0.5 on."""
    row = {}
    for s in EVAL_SETS:
        lp, a = scores[s]["logps"], scores[s]["matching_is_a"]
        margin = lp[:, 0] - lp[:, 1]
        match = margin > 0
        disfavoured = start[s]["logps"][:, 0] <= start[s]["logps"][:, 1]

        def mean(x, where):
            return x[where].float().mean().item() if where.any() else float("nan")

        row[f"{s}/match"] = match.float().mean().item()
        row[f"{s}/match_disfavoured"] = mean(match, disfavoured)
        row[f"{s}/match_favoured"] = mean(match, ~disfavoured)
        row[f"{s}/logodds_disfavoured"] = mean(margin, disfavoured)
        row[f"{s}/auc"] = _auc(margin * (2 * a.float() - 1), a)    # log π(A) - log π(B) vs "the answer is (A)"
        row[f"{s}/disfavoured"] = int(disfavoured.sum())
        row[f"{s}/favoured"] = int((~disfavoured).sum())
    return row


def table(rows: dict[str, list[dict]], labels: dict[str, str], start_row: dict) -> str:
    """A markdown table: one line per method, the mean over seeds; then the largest spread between seeds."""
    cols = []
    for s, name in (("id", "ID"), ("ood", "OOD")):
        cols += [((f"{s}/match",), f"{name} match"),
                 ((f"{s}/match_disfavoured",), f"{name}: disfavoured ({start_row[f'{s}/disfavoured']})"),
                 ((f"{s}/match_favoured",), f"{name}: favoured ({start_row[f'{s}/favoured']})")]
    cols += [(("id/logodds_disfavoured", "ood/logodds_disfavoured"), "log-odds of the right answer, disfavoured (ID / OOD)"),
             (("id/auc", "ood/auc"), "item AUC (ID / OOD)")]
    lines = ["| method | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---|" * len(cols)]

    def fmt(key: str, value: float) -> str:
        return f"{value:+.1f}" if "logodds" in key else f"{value:.2f}"

    spread = {}
    for label, runs in [(labels["start"], [start_row])] + [(labels[m], r) for m, r in rows.items()]:
        cells = []
        for keys, _ in cols:
            parts = []
            for k in keys:
                values = [r[k] for r in runs]
                parts.append(fmt(k, sum(values) / len(values)))
                kind = "logodds" if "logodds" in k else "rate"
                spread[kind] = max(spread.get(kind, 0.0), max(values) - min(values))
            cells.append(" / ".join(parts))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    n_seeds = max(len(r) for r in rows.values()) if rows else 1
    if n_seeds > 1:
        lines.append(f"\nMeans over {n_seeds} seeds; the largest difference between seeds of one method: "
                     f"{spread['rate']:.2f} in a rate or AUC, {spread['logodds']:.1f} in a log-odds.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/ab_experiment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="logs/ab_experiment", help="output directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the stage-2 runs")
    parser.add_argument("--steps", type=int, default=None, help="stage-2 optimizer steps (default: the YAMLs')")
    parser.add_argument("--warmup-steps", type=int, default=None, help="warm-up steps (default: the YAML's)")
    parser.add_argument("--model", default=None, help="warm-up model (default: the YAML's, builtin:small)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                        help=f"default: {' '.join(DEFAULT_METHODS)}")
    parser.add_argument("--n-eval", type=int, default=200, help="questions per evaluation set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a few shared cores)")
    parser.add_argument("--verbose", action="store_true", help="show every run's output")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    if not args.verbose:
        import rich

        hf_logging.disable_progress_bar()
        rich.reconfigure(quiet=True)   # the data module's transient progress bars
    out = Path(args.out)
    t0 = time.perf_counter()

    # 1. the biased starting model
    start_dir = out / "start"
    if not (start_dir / "config.json").exists():
        data = write_biased_data(out / "data" / "ab_always_A.jsonl")
        over = {"data.init_args.train.path": str(data), "export.dirpath": str(start_dir)}
        if args.warmup_steps:
            over["trainer.max_steps"] = args.warmup_steps
        if args.model:
            over["model.init_args.policy.name"] = args.model
        t = time.perf_counter()
        _fit(_config("ab_warmup.yaml", out, "warmup", over), out / "runs" / "warmup.log", args.verbose)
        print(f"warm-up (always (A)): {time.perf_counter() - t:.0f} s -> {start_dir}", flush=True)
    start = score(start_dir, args.n_eval)
    start_row = rates(start, start)

    # 2. every method from it, 3. scored
    rows: dict[str, list[dict]] = {}
    for method in args.methods:
        name, _ = METHODS[method]
        for seed in args.seeds:
            run = f"{method}-s{seed}"
            model_dir = out / "runs" / run / "hf_model"
            if not (model_dir / "config.json").exists():
                over = {"model.init_args.policy.name": str(start_dir), "export.dirpath": str(model_dir),
                        "seed_everything": seed, "data.init_args.seed": seed}
                if args.steps:
                    over["trainer.max_steps"] = args.steps
                t = time.perf_counter()
                _fit(_config(name, out, run, over), out / "runs" / f"{run}.log", args.verbose)
                print(f"{run}: {time.perf_counter() - t:.0f} s", flush=True)
            rows.setdefault(method, []).append({"seed": seed, **rates(score(model_dir, args.n_eval), start)})

    labels = {"start": "starting model (always (A))", **{m: label for m, (_, label) in METHODS.items()}}
    md = table(rows, labels, start_row)
    (out / "results.json").write_text(json.dumps({"start": start_row, "runs": rows}, indent=1))
    (out / "table.md").write_text(md + "\n")
    print(f"\nA/B bias experiment ({len(args.seeds)} seed(s), {time.perf_counter() - t0:.0f} s; {out / 'table.md'}):\n")
    print(md, flush=True)


if __name__ == "__main__":
    sys.exit(main())
