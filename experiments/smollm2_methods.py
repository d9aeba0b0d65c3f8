"""The method comparison on a real chat model: CAA, SFT, CAA on SFT, IW-SFT (loss and resample) and DPO on
builtin:smollm2-135m-instruct, from n ∈ {16, 64, 256} contrast pairs of a model-written-evals behaviour, in (lm) and
out of distribution (human), with what each costs the model (held-out HH-RLHF dialogues' log-prob, answers to 8
general questions). The methods, sizes and evaluation sets are the sweep configs/sweeps/smollm2_mwe.yaml; each
behaviour is that sweep with its data paths replaced (an override of `base`, handed on to SLURM tasks too).

    python scripts/smollm2_methods_experiment.py --sizes 16 64     # the CPU grid (57 min on 2 idle cores)
    python scripts/smollm2_methods_experiment.py                   # 2 behaviours, n = 16, 64, 256, 1 seed
    python scripts/smollm2_methods_experiment.py --slurm --seeds 0 1 2   # the full grid as SLURM job arrays
    python scripts/smollm2_methods_experiment.py --collect         # the tables from finished runs
    python scripts/smollm2_methods_experiment.py --quick           # n = 16, 1 behaviour (a smoke test)
    python scripts/smollm2_methods_experiment.py --methods dpo --sizes 256 --seeds 1 2 --out logs/dpo_seeds   # one cell

On this machine the runs go two at a time (`--jobs`, default 2: each in its own process with cores/jobs threads,
lit_align/sweep/side_by_side.py), both behaviours' runs in one queue.

Outputs under <out>/<behaviour>/: runs/, results.csv, the sweep's figure, table.md, start.json (the model before any
method), letter_bias.json (its preference for the letter A on the A/B evaluation sets), weights.json (the
importance weights the start model gives the training pairs: IW-SFT's π_start^-1, their effective sample size and
largest/mean ratio, before and after the clip at 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lit_align.config import deep_merge, read_yaml
from lit_align.errors import LitAlignError
from lit_align.sweep.engine import Sweep
from lit_align.sweep.side_by_side import cores, jobs_count, run_sweeps

from experiments.organism import start_model, write_results

REPO = Path(__file__).resolve().parents[1]  # experiments/ lives in the repository, never installed
CONFIG = REPO / "configs" / "sweeps" / "smollm2_mwe.yaml"
BEHAVIOURS = ("survival-instinct", "power-seeking-inclination")
QUICK = {"sizes": [16], "seeds": [0]}
COLUMNS = (("val_id/ab/p_match", "ID p_match"), ("val_ood/ab/p_match", "OOD p_match"),
           ("val_chat/logps/chosen", "chat: log-prob of held-out answers"),
           ("val_general/gen/substring", "general questions right"))
MWE = "../shared/data/model-written-evals"


def behaviour_overrides(config: Path, behaviour: str, out: Path, policy: str | None) -> dict:
    """The sweep's top-level keys for one behaviour: its data files in `base` and the CAA selection pairs."""
    spec = read_yaml(config)
    data = spec["base"]["data"]["init_args"]
    lm, human = f"{MWE}/lm/{behaviour}.jsonl", f"{MWE}/human/{behaviour}.jsonl"
    base = deep_merge(spec["base"], {"data": {"init_args": {
        "train": {**data["train"], "path": lm},
        "val": {**data["val"], "id": {**data["val"]["id"], "path": lm}, "ood": {**data["val"]["ood"], "path": human}}}}})
    if policy:
        base = deep_merge(base, {"model": {"init_args": {"policy": {"name": policy}}}})
    return {"out": str(out / behaviour), "base": base, "steer": {**spec["steer"],
                                                                  "select": {**spec["steer"]["select"], "path": lm}}}


def importance_weights(sweep: Sweep, max_ratio: float = 10.0) -> dict:
    """IW-SFT's weights π_start(matching answer | question)^-1 over the largest size's training pairs, as the start
    model gives them: effective sample size (share of n) and largest / mean, unclipped and clipped at `max_ratio`;
    computed once per largest size into <out>/weights.json."""
    import torch

    from lit_align.data.datamodule import AlignDataModule
    from lit_align.layouts import LAYOUTS
    from lit_align.modeling.logprobs import batch_logps
    from lit_align.weights import effective_sample_size, normalized_weights, reference_log_weights

    path = sweep.out / "weights.json"
    n = max(sweep.spec.sizes)
    cached = json.loads(path.read_text()) if path.exists() else None
    if cached and cached["n"] == n:  # (a grid grown to a larger n computes them again)
        return cached
    model, tokenizer = start_model(sweep)
    args = dict(sweep.spec.base["data"]["init_args"])
    args.update(train={**args["train"], "limit": n}, val={})
    dm = AlignDataModule(**args)
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("fit")
    logps = []
    with torch.no_grad():
        for batch in dm.eval_loader("train"):
            logps.append(batch_logps(model, batch).logps[:, 0].double())          # log π_start(matching | question)
    log_w = reference_log_weights(torch.cat(logps), torch.ones(1), alpha=1.0)
    result = {"n": len(log_w)}
    for label, cap in (("unclipped", None), (f"clipped_{max_ratio:g}", max_ratio)):
        w, _ = normalized_weights(log_w, None, cap)
        result[label] = {"ess_share": float(effective_sample_size(w)), "max_over_mean": float(w.max() / w.mean())}
    result["p_start_matching"] = {"mean": float((-log_w).exp().mean()), "min": float((-log_w).exp().min()),
                                  "max": float((-log_w).exp().max())}
    sweep.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def letter_bias(sweep: Sweep) -> dict:
    """The start model's preference for the letter A on each evaluation set of pairs: per set, the share of items
    whose matching answer is (A), the mean p(A) = p(A) / (p(A) + p(B)) over the two answers, and p_match on the items
    where A matches and where B does. A p_match that moves without the behaviour (e.g. training on letter-balanced
    pairs evening out a bias) shows here. Computed once into <out>/letter_bias.json."""
    import torch

    from lit_align.data.datamodule import AlignDataModule
    from lit_align.layouts import LAYOUTS
    from lit_align.modeling.logprobs import batch_logps

    path = sweep.out / "letter_bias.json"
    if path.exists():
        return json.loads(path.read_text())
    model, tokenizer = start_model(sweep)
    args = dict(sweep.spec.base["data"]["init_args"])
    sets = {name: src for name, src in args["val"].items()                 # the A/B sets (not the chat pairs)
            if isinstance(src, dict) and "/model-written-evals/" in str(src.get("path", ""))}
    result = {}
    for name, src in sets.items():
        rows = [json.loads(line) for line in Path(src["path"]).read_text().splitlines() if line.strip()]
        rows = rows[src.get("skip", 0): src.get("skip", 0) + src.get("limit", len(rows))]
        a = torch.tensor([r["answer_matching_behavior"].strip().startswith("(A") for r in rows])
        dm = AlignDataModule(**{**args, "train": {k: v for k, v in src.items() if k != "kind"}, "val": {}})
        dm.connect(tokenizer, LAYOUTS["pair"])
        dm.setup("fit")
        with torch.no_grad():   # (n, 2): log p(matching answer), log p(other answer); the records in file order
            logps = torch.cat([batch_logps(model, batch).logps for batch in dm.eval_loader("train")])
        if len(logps) != len(a):
            raise LitAlignError(f"letter bias: {name} kept {len(logps)} of its {len(a)} items")
        p_match = torch.sigmoid(logps[:, 0] - logps[:, 1])
        p_a = torch.where(a, p_match, 1 - p_match)                          # p(A) / (p(A) + p(B))
        result[name] = {"a_share": float(a.float().mean()), "mean_p_a": float(p_a.mean()),
                        "p_match": float(p_match.mean()), "p_match_a_matching": float(p_match[a].mean()),
                        "p_match_b_matching": float(p_match[~a].mean())}
    sweep.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/smollm2_methods_experiment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 16, one seed, the first behaviour")
    parser.add_argument("--behaviours", nargs="+", default=list(BEHAVIOURS), help=f"default: {' '.join(BEHAVIOURS)}")
    parser.add_argument("--sizes", type=int, nargs="+", help="default: the sweep's (16 64 256)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the sweep's (0)")
    parser.add_argument("--out", default="logs/experiments/smollm2_mwe", help="the output folder")
    parser.add_argument("--policy", help="another starting model (e.g. builtin:tiny in tests)")
    parser.add_argument("--methods", nargs="+", help="only these of the sweep's methods (e.g. dpo: more seeds of one cell)")
    parser.add_argument("--layers", type=int, nargs="+", help="CAA's candidate layers (default: the sweep's)")
    parser.add_argument("--slurm", action="store_true", help="write SLURM job arrays (+ submit.sh) instead of running")
    parser.add_argument("--collect", action="store_true", help="only the tables from finished runs")
    parser.add_argument("--config", default=str(CONFIG), help="the sweep file")
    parser.add_argument("--jobs", type=jobs_count, default=min(2, cores()),
                        help="runs at once, each in its own process with cores/jobs threads (default: 2, or 1 on one "
                             "core; 1: one after another in this process)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    behaviours = args.behaviours[:1] if args.quick else args.behaviours
    try:
        if not Path(args.config).is_file():
            raise LitAlignError(f"{args.config} is missing: run the experiment from a checkout of the repository")
        methods = None
        if args.methods:  # the sweep's objectives, only those asked for
            every = read_yaml(Path(args.config))["objectives"]
            unknown = sorted(set(args.methods) - set(every))
            if unknown:
                raise LitAlignError(f"--methods: {', '.join(unknown)} not in {args.config} (it has {', '.join(every)})")
            methods = {k: v for k, v in every.items() if k in args.methods}
        sweeps = {}
        for behaviour in behaviours:
            overrides = {**(QUICK if args.quick else {}), **behaviour_overrides(Path(args.config), behaviour,
                                                                                 Path(args.out), args.policy)}
            overrides.update({k: getattr(args, k) for k in ("sizes", "seeds") if getattr(args, k)})
            if methods:
                overrides["objectives"] = methods
            if args.layers:
                overrides["steer"] = {**overrides["steer"], "layers": args.layers}
            sweeps[behaviour] = sweep = Sweep(args.config, overrides)
            print(f"== {behaviour}: {len(sweep.runs)} runs -> {sweep.out}", flush=True)
            if args.slurm:
                sbatch, submit = sweep.write_slurm()
                print(f"wrote {sbatch} ({len(sweep.runs)} array tasks) and {submit}; submit with: bash {submit}",
                      flush=True)
        if args.slurm:
            return
        if not args.collect:
            run_sweeps(sweeps.values(), args.jobs)   # (jobs > 1: every behaviour's runs in one queue)
        for behaviour, sweep in sweeps.items():
            weights, letters = importance_weights(sweep), letter_bias(sweep)
            write_results(sweep, COLUMNS, heading=f"{behaviour}\n\n",
                          footer=f"\nIW-SFT's weights on the training pairs: {json.dumps(weights)}\n"
                                 f"\nThe start model's letter bias (letter_bias.json): {json.dumps(letters)}\n")
    except LitAlignError as e:
        print(f"\nsmollm2 methods experiment: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
