"""`lit_align steer --config X.yaml`: extract a CAA steering vector from the config's training pairs, evaluate
every validation set over a grid of layers x multipliers, and write what it found (steering/vectors.py has the math).

The config reuses a training config's `model:` and `data:` sections (the policy: `model.init_args.policy`, a
ModelSpec; the data module: train = the extraction pairs, val = the evaluation sets, read as pairs), plus:

    steer:
      layers: all                  # blocks to extract and evaluate: a list of indices (0-based) or all
      multipliers: [-2, -1, -0.5, 0, 0.5, 1, 2]
      positions: after_prompt      # after_prompt (CAA: from the first answer token on) or all
      method: mean_diff            # mean_diff (CAA) or pca
      read: answer                 # answer (the letter token), answer_end or continuation_mean
      n_pairs: null                # extract from at most this many training pairs (null: all)
      vector: null                 # a saved vector to evaluate instead of extracting one
      check: weights               # with `vector`: weights, architecture (a fine-tuned descendant) or none
      out: null                    # default logs/<name>/steer
      name: null                   # default the logger's name (trainer.logger.init_args.name), else the file's
      device: auto                 # auto (cuda when there is one), cpu, cuda, cuda:1, ...

The command line is parsed by jsonargparse, as `fit`'s (lightning_cli.py): `--config FILE` (repeatable: merged in
order), `steer:` typed by the `SteerSpec` dataclass (its choices Literal types, checked at parsing), `model:` and
`data:` typed as `fit` types them (an objective, default SFT, of which only `init_args.policy` is read; a data module,
default AlignDataModule), so any key is overridden as in `fit`: `--steer.layers "[1, 2]"`,
`--data.init_args.train.limit 64`. A training config's other sections (`TRAINING_SECTIONS`: trainer, seed_everything,
...) are accepted and ignored, but for the logger's name. A missing config file, an unknown key or a value of the
wrong type is said in one sentence (exit 2).

Outputs under `out`: vector.safetensors; steer.csv (set, layer, multiplier, p_match, match_rate, margin, n);
steer_summary.csv and steer_summary.md (per set and layer: p_match at multiplier 0 and at the ends of the grid,
the steerability slope and the share of anti-steerable items); steer.png (p_match against the multiplier, one
line per layer, one panel per set).
"""

from __future__ import annotations

import csv
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lit_align.config import spec_from_dict
from lit_align.errors import LitAlignError
from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer, policy_spec
from lit_align.steering.vectors import (CHECKS, METHODS, POSITIONS, READS, SteeringVector, contrast_margins,
                                contrast_margins_grid, extract_from_data, layer_indices, match_rate, p_match, steerability, steering_blocks)
from lit_align.layouts import LAYOUTS

CSV_COLUMNS = ("set", "layer", "multiplier", "p_match", "match_rate", "margin", "n")
SUMMARY_COLUMNS = ("set", "layer", "p_match_0", "p_match_m_min", "p_match_m_max", "steerability", "anti_steerable", "n")


TRAINING_SECTIONS = {"trainer": dict | None, "seed_everything": bool | int | None, "ckpt_path": str | None,
                     "checkpoint": dict | None, "export": dict | None, "nonfinite": dict | None,
                     "requeue": dict | None, "generate": dict | None}
"""The sections of a `fit` config (lightning_cli.py) besides model and data: accepted so that a training config can be
given as it is, and ignored (but for `trainer.logger.init_args.name`, the default `steer.name`)."""


@dataclass
class SteerSpec:
    """The `steer:` section (module docstring); jsonargparse checks the types, `validate` what they cannot say.

    Args:
        layers: blocks to extract and evaluate: a list of indices (0-based; negative from the end), one, or all.
        multipliers: the grid's α: the residual stream at a block gets + α·v.
        positions: after_prompt (CAA: from the first answer token on) or all.
        method: mean_diff (CAA) or pca.
        read: where the activations are read: answer (the letter token), answer_end or continuation_mean.
        n_pairs: extract from at most this many training pairs (null: all).
        vector: a saved vector to evaluate instead of extracting one.
        check: with `vector`: weights, architecture (a fine-tuned descendant) or none.
        out: the output folder (default logs/<name>/steer).
        name: default the logger's name (trainer.logger.init_args.name), else the last config file's.
        device: auto (cuda when there is one), cpu, cuda, cuda:1, ...
    """

    layers: list[int] | int | str = "all"                # "all" or indices; another string: `validate` refuses it
    multipliers: list[float] = field(default_factory=lambda: [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    positions: Literal[POSITIONS] = "after_prompt"
    method: Literal[METHODS] = "mean_diff"
    read: Literal[READS] = "answer"
    n_pairs: int | None = None
    vector: str | None = None
    check: Literal[CHECKS] = "weights"
    out: str | None = None
    name: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        for key, allowed in (("positions", POSITIONS), ("method", METHODS), ("read", READS), ("check", CHECKS)):
            if getattr(self, key) not in allowed:   # (a SteerSpec built in Python, not parsed)
                raise LitAlignError(f"steer.{key} must be one of {', '.join(allowed)}, not '{getattr(self, key)}'")
        if isinstance(self.layers, str) and self.layers != "all":
            raise LitAlignError(f"steer.layers must be a list of block indices or all, not '{self.layers}'")
        if not isinstance(self.multipliers, list) or not self.multipliers or not all(
                isinstance(m, (int, float)) and not isinstance(m, bool) for m in self.multipliers):
            raise LitAlignError(f"steer.multipliers must be a non-empty list of numbers, not {self.multipliers!r}")


# -- the config ---------------------------------------------------------------------------------------------


def build_parser():
    """The jsonargparse parser of `lit_align steer` (module docstring); it raises its errors (parse_args says them)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lit_align.data.datamodule import AlignDataModule
    from lit_align.objectives.base import Objective

    parser = ArgumentParser(prog="lit_align steer", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a config file (YAML; repeatable, merged in order)")
    parser.add_argument("--steer", type=SteerSpec, default=SteerSpec(), help="the steering grid (SteerSpec)")
    parser.add_subclass_arguments(Objective, "model", required=False, help="the objective: only init_args.policy is read")
    parser.add_subclass_arguments(AlignDataModule, "data", required=False,
                                  help="train: the extraction pairs; val: the evaluation sets")
    parser.set_defaults({"model": {"class_path": "lit_align.objectives.SFT"},
                         "data": {"class_path": "lit_align.data.AlignDataModule"}})
    for name, kind in TRAINING_SECTIONS.items():
        parser.add_argument(f"--{name}", type=kind, default=None, help="(a training config's: ignored)")
    return parser


def parse_args(argv: list[str]) -> dict:
    """`--config FILE` (once or more, merged in order) and `--a.b.c VALUE` overrides -> the config as plain data:
    {"_files": [the config files], "steer": {...}, "model": {"class_path", "init_args"}, "data": {...}, ...}."""
    from jsonargparse import ArgumentError

    from lit_align.lightning_cli import parse_error_sentence  # (and `fit`'s YAML loader and data-path rules)

    parser = build_parser()
    try:
        parsed = parser.parse_args(argv)
    except ArgumentError as e:
        raise LitAlignError(f"{' '.join(parse_error_sentence(str(e)).split())} (all options: lit_align steer --help)"
                            ) from None
    cfg = parsed.as_dict()
    files = [str(path) for path in cfg.pop("config", None) or []]
    if not files:
        raise LitAlignError("steer: give a config: lit_align steer --config configs/steer.yaml")
    return {"_files": files, **cfg}


def _datamodule(cfg: dict):
    data = cfg.get("data") or {}
    if not isinstance(data, dict):
        raise LitAlignError("data: expected a mapping")
    class_path = data.get("class_path", "lit_align.data.AlignDataModule")
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise LitAlignError(f"data.class_path: cannot import '{class_path}'") from None
    try:
        return cls(**(data.get("init_args", {k: v for k, v in data.items() if k != "class_path"}) or {}))
    except TypeError as e:
        raise LitAlignError(f"data.init_args: {e}") from None


def _name(cfg: dict, spec: SteerSpec) -> str:
    if spec.name:
        return spec.name
    logger = (cfg.get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and (logger.get("init_args") or {}).get("name"):
        return str(logger["init_args"]["name"])
    return Path(cfg["_files"][-1]).stem


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LitAlignError(f"steer.device: unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LitAlignError("steer.device: cuda asked, but this machine has no CUDA GPU")
    return device


# -- the run ------------------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


class _Progress:
    """A rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int):
        self.total, self.done, self.bar = total, 0, None
        self.start = time.perf_counter()
        if sys.stdout.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("steering grid", total=total)

    def step(self, what: str, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n, description=what)
        else:  # (in a log: how long so far, and how long the rest will take at this pace)
            elapsed = time.perf_counter() - self.start
            left = elapsed / self.done * (self.total - self.done)
            print(f"[{self.done}/{self.total}] {what}  (elapsed {_clock(elapsed)}, ETA {_clock(left)})", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def read_config(cfg: dict) -> tuple[SteerSpec, ModelSpec, "AlignDataModule"]:  # noqa: F821
    """The config's steer section, policy and (not yet set up) data module, checked; nothing is loaded."""
    spec = spec_from_dict(SteerSpec, cfg.get("steer") or {}, "steer")
    spec.validate()
    return spec, policy_spec(cfg), _datamodule(cfg)


def run_steer(cfg: dict) -> dict[str, Path]:
    """Extract (or load), evaluate the grid, write the outputs; returns {what: path}."""
    from lit_align.plots import plot_steering

    spec, policy, dm = read_config(cfg)
    out = Path(spec.out or Path("logs") / _name(cfg, spec) / "steer")
    tokenizer = load_tokenizer(policy)
    model = load_model(policy, tokenizer).to(_device(spec.device)).eval()
    dm.connect(tokenizer, LAYOUTS["pair"])
    dm.setup("validate" if spec.vector else "fit")
    val_sets = {name: dm.log_prefix("val", name) for name in dm.val_sources}
    if not val_sets:
        raise LitAlignError("steer: the config has no validation sets (data.init_args.val) to evaluate on")
    n_blocks = len(steering_blocks(model)[0])
    if spec.vector:
        vector = SteeringVector.load(spec.vector)
        vector.check(model, spec.check, tokenizer)
    else:
        vector = extract_from_data(model, dm, "train", layers=spec.layers, read=spec.read, method=spec.method,
                                   max_pairs=spec.n_pairs)
    # a loaded vector is evaluated at the layers asked for, checked against the model like extraction checks them
    # (`i % n_blocks` had turned layer 7 of a 2-block model into layer 1)
    layers = vector.layers if spec.layers == "all" else layer_indices(spec.layers, n_blocks)
    paths = {"vector": vector.save(out / "vector.safetensors")}
    multipliers = [float(m) for m in spec.multipliers]

    rows, summary = [], []
    fast = spec.positions == "after_prompt"  # the prompt is never steered: one prompt pass per item for the whole grid
    sizes = {set_name: len(dm.splits[split]) for set_name, split in val_sets.items()}
    progress = _Progress(sum(sizes.values()) if fast else len(val_sets) * len(layers))
    try:
        for set_name, split in val_sets.items():
            loader = dm.eval_loader(split, by_length=True)   # per-item margins line up across the grid
            if fast:
                done = [0]

                def advance(n: int, set_name=set_name, done=done) -> None:   # after each batch of items
                    done[0] += n
                    progress.step(f"{set_name}: {done[0]}/{sizes[set_name]} items, every layer and multiplier", n)
                grid = contrast_margins_grid(model, loader, {layer: vector.directions[layer] for layer in layers},
                                             sorted(set(multipliers) | {0.0}), on_batch=advance)
                base = grid[(layers[0], 0.0)]                           # multiplier 0: the same for every layer
            else:
                base = contrast_margins(model, loader)                 # multiplier 0: the same for every layer
            for layer in layers:
                if fast:
                    margins = [grid[(layer, m)] for m in multipliers]
                else:
                    margins = []
                    with vector.apply(model, 0.0, [layer], spec.positions, check="none") as steering:
                        for m in multipliers:
                            steering.multiplier = m
                            margins.append(base if m == 0 else contrast_margins(model, loader, steering))
                for m, mg in zip(multipliers, margins):
                    rows.append({"set": set_name, "layer": layer, "multiplier": m, "p_match": p_match(mg),
                                 "match_rate": match_rate(mg), "margin": float(mg.mean()), "n": mg.numel()})
                by_m = [r["p_match"] for r in rows[-len(multipliers):]]
                lo, hi = multipliers.index(min(multipliers)), multipliers.index(max(multipliers))
                slopes = steerability(torch.stack(margins), multipliers) if len(set(multipliers)) > 1 else None
                summary.append({"set": set_name, "layer": layer, "p_match_0": p_match(base),
                                "p_match_m_min": by_m[lo], "p_match_m_max": by_m[hi],
                                "steerability": float(slopes.mean()) if slopes is not None else float("nan"),
                                "anti_steerable": float((slopes < 0).float().mean()) if slopes is not None
                                else float("nan"), "n": base.numel()})
                if not fast:
                    progress.step(f"{set_name} layer {layer}: p_match {by_m[lo]:.3f} (m={min(multipliers):g}) .. "
                                  f"{by_m[hi]:.3f} (m={max(multipliers):g})")
    finally:
        progress.close()
    out.mkdir(parents=True, exist_ok=True)
    paths["csv"] = _write_csv(out / "steer.csv", CSV_COLUMNS, rows)
    paths["summary"] = _write_csv(out / "steer_summary.csv", SUMMARY_COLUMNS, summary)
    paths["summary_md"] = _write_markdown(out / "steer_summary.md", summary, vector)
    paths["figure"] = plot_steering(rows, out / "steer.png", title=f"CAA: {policy.name}, {vector.n_pairs} pairs "
                                    f"({vector.method}, read at {vector.read})")
    return paths


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})
    return path


def _write_markdown(path: Path, summary: list[dict], vector: SteeringVector) -> Path:
    lines = [f"Steering vector: {vector.method}, read at {vector.read}, {vector.n_pairs} pairs from {vector.source}.",
             "steerability = mean over items of the least-squares slope of log π(m) - log π(nm) against the "
             "multiplier; anti-steerable = share of items whose slope is negative.", "",
             "| set | layer | |v| | p_match (m=0) | p_match (min m) | p_match (max m) | steerability | anti-steerable | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    norms = vector.norms
    for r in summary:
        lines.append(f"| {r['set']} | {r['layer']} | {norms[r['layer']]:.3g} | {r['p_match_0']:.3f} | "
                     f"{r['p_match_m_min']:.3f} | {r['p_match_m_max']:.3f} | {r['steerability']:.3f} | "
                     f"{r['anti_steerable']:.2f} | {r['n']} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        started = time.time()
        paths = run_steer(parse_args(argv))
    except LitAlignError as e:
        print(f"\nlit_align steer: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"steering done in {time.time() - started:.0f} s", flush=True)
    for what, label in (("vector", "vector:       "), ("csv", "grid:         "), ("summary", "summary:      "),
                        ("summary_md", "summary (md): "), ("figure", "figure:       ")):
        print(f"{label}{paths[what]}", flush=True)
