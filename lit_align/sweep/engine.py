"""Sweeps: a grid of objectives x training-set sizes x seeds (x label-noise levels), each run through the real CLI
(LitAlignCLI), then one CSV and one figure of every evaluation metric against the number of training examples, one
line per objective (the mean over seeds, with a band from the lowest to the highest seed).

    python -m lit_align.sweep run     SWEEP.yaml              # every run, one after another, then collect
    python -m lit_align.sweep run     SWEEP.yaml --index 3    # one run (a SLURM array task)
    python -m lit_align.sweep run     SWEEP.yaml --jobs 2     # two runs at a time, 1 thread each on 2 cores
    python -m lit_align.sweep slurm   SWEEP.yaml              # write <out>/sweep.sbatch (+ submit.sh)
    python -m lit_align.sweep collect SWEEP.yaml              # results.csv + sweep.png from finished runs
    python -m lit_align.sweep list    SWEEP.yaml              # the runs, by index

(scripts/sweep.py is the same command.) `--overrides '{"sizes": [8], "seeds": [0]}'` replaces top-level keys of the
file for that command; a sweep read with overrides hands them on to the runs it starts in other processes
(`run --subprocess`, the SLURM array and its collect job), so that task i runs this sweep's run i. A sweep file:

    name: ab_sample_efficiency
    out: logs/sweeps/ab                 # runs/<run>/ (events, config.yaml, result.json, log.txt), results.csv, PNG
    sizes: [100, 300, 1000]             # training examples: data.init_args.train.limit
    seeds: [0, 1]                       # seed_everything and the data module's shuffle seed
    noise: [0.0, 0.2]                   # label noise (default [0.0]): the share of training labels flipped
    epochs: 4                           # each run trains max(min_steps, ceil(epochs * size / batch_size)) steps
    min_steps: 50
    draw_per_seed: false                # true: the training source's seed is the run's (a built-in task then
                                        # draws other examples per seed); false: the same first `size` rows
    metrics: [val_id/logps/accuracy, val_ood/logps/accuracy]   # drawn (default: every */logps/accuracy)
    config: configs/some.yaml           # optional base config file; `base` is merged over it
    base: {data: ..., trainer: ...}     # LightningCLI config shared by every run
    objectives:                         # name -> config merged over the base (a `config:` key: a file first)
      sft: {model: {class_path: lit_align.objectives.SFT, init_args: ...}}
      dpo: {model: {class_path: lit_align.objectives.DPO, init_args: ...}}
    slurm: {time: "00:30:00", cpus_per_task: 4, gres: null, partition: null, max_parallel: null,
            setup: "source .venv/bin/activate", sbatch: ["--mem=16G"]}

Steering and generation (lit_align/steering/caa.py, generation.py):

    steer: {layers: all, multipliers: [0.5, 1, 2, 4, 8], select: {path: ..., skip: 1024, limit: 64}}
    generate:                           # generation-scored sets, logged as val_<name>/gen/<scorer>
      sets: {open: {path: builtin:organism, split: open, limit: 100}}
      scorer: match                     # scorers.py: a name, {name: ..., <options>}, or a list
      max_new_tokens: 12
    objectives:
      caa: {caa: true, model: ...}      # no training: CAA from the run's `size` training pairs (the policy steered)
      sft: {then_caa: sft_caa, model: ...}   # after training, CAA on top of the trained policy: result "sft_caa"

Online methods (objectives/grpo.py, online_dpo.py) are budgeted in labels, the reward queries they make:

    objectives:
      grpo: {budget: reward_queries, model: {class_path: lit_align.objectives.GRPO, init_args: ...}}

Their `size` is then the number of reward queries: size / (completions per prompt) prompts, each used once (epochs
and min_steps do not apply); the default, `budget: examples`, counts training examples. Every result has a `labels`
column (training examples for the others), and a sweep with an online method draws its figure against it, so
offline methods at n pairs and online RL at n reward queries share one axis.

Label noise (`noise:`, data/label_noise.py) asks which method tolerates a labeller who makes mistakes. A run at noise
f > 0 is named <objective>-n<size>-s<seed>-noise<f> (at 0 the name has no suffix, so runs finished before the axis
existed are reused) and flips labels of its TRAINING source only, seeded by the run's seed, never the evaluation sets:
chosen and rejected swapped in exactly round(f · size) of its pairs (`label_noise: {fraction: f, seed: <seed>}` on
data.init_args.train; an SFT method then trains on the rejected answer of those, a CAA vector is extracted from them);
a method budgeted in reward queries has no pairs, so its labeller's binary rewards turn over instead, each with
probability f (the objective's `label_noise`, objectives/online.py). Every result has `noise` and `flipped` (labels
flipped) columns, and with more than one noise level the figure has one column of panels per level.

A CAA run has the same result keys as a trained run (the evaluation sets' logps/accuracy, ab/p_match, ...), so
one CSV and one figure hold both.

The file is checked when the sweep is read (the dataclasses SweepSpec, SlurmSpec, GenerateSpec and MethodSpec below,
through jsonargparse): an unknown key or a value of the wrong type is said in one sentence naming the file and the
key. A key given as null keeps its default.

A run is done when its runs/<run>/result.json exists: a sweep that is run again (after a crash, or as
another SLURM array) skips finished runs and redoes the others from scratch. Each run ends with one
validation pass of the final model over every evaluation set (trainer.validate), and those numbers are
its result; validation during training is off (check_val_every_n_epoch) to save time.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from lit_align.config import deep_merge, read_yaml
from lit_align.errors import LitAlignError
from lit_align.layouts import LAYOUTS
from lit_align.steering.caa import CAAOptions


@dataclass
class SlurmSpec:
    """The `slurm:` section: the job array's sbatch options (module docstring)."""

    time: str = "01:00:00"
    cpus_per_task: int = 4
    gres: str | None = None
    partition: str | None = None
    max_parallel: int | None = None       # at most this many array tasks at once
    setup: str | None = None              # a shell line before the run, e.g. "source .venv/bin/activate"
    sbatch: list[str] = field(default_factory=list)   # more #SBATCH options, e.g. ["--mem=16G"]


@dataclass
class GenerateSpec:
    """The `generate:` section: generation-scored sets, logged as val_<name>/gen/<scorer>."""

    sets: dict[str, dict | str] = field(default_factory=dict)   # name -> data source
    scorer: str | dict | list = "match"   # scorers.py: a name, {name: ..., <options>}, or a list
    max_new_tokens: int = 16


@dataclass
class SweepSpec:
    """A sweep file (module docstring). `steer` is CAAOptions (lit_align/steering/caa.py); `objectives` and `base` are LightningCLI configs, which LitAlignCLI checks when a run starts."""

    objectives: dict[str, dict | None] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    name: str | None = None               # default: the file's stem
    out: str | None = None                # default: logs/sweeps/<name>
    seeds: list[int] = field(default_factory=lambda: [0])
    noise: list[float] = field(default_factory=lambda: [0.0])   # label noise levels (module docstring)
    epochs: float = 1.0
    min_steps: int = 1
    draw_per_seed: bool = False
    metrics: list[str] | None = None      # default: every */logps/accuracy of the results
    config: str | None = None
    base: dict = field(default_factory=dict)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    steer: CAAOptions = field(default_factory=CAAOptions)
    generate: GenerateSpec = field(default_factory=GenerateSpec)


@dataclass
class MethodSpec:
    """The sweep-level keys of an `objectives:` entry; the entry's other keys are the run's LightningCLI config."""

    caa: bool = False                     # no training: CAA from the run's training pairs
    then_caa: str | None = None           # after training, CAA on top of the trained policy, as this result
    budget: Literal["examples", "reward_queries"] = "examples"   # what `size` counts


def _parse(cls, values: dict, where: str):
    """`values` as the dataclass `cls`, checked by jsonargparse as `lit_align steer` checks its SteerSpec (types,
    Literal choices, unknown keys of a section); what does not fit is said in one sentence after `where`."""
    from jsonargparse import ArgumentError, ArgumentParser

    from lit_align.lightning_cli import parse_error_sentence

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls)
    try:
        parsed = parser.parse_object(values)
    except ArgumentError as e:
        raise LitAlignError(f"{where}: {' '.join(parse_error_sentence(str(e)).split())}") from None
    return cls(**parser.instantiate(parsed).as_dict())  # (its sections are their dataclasses already)


def read_spec(path: Path, overrides: dict | None = None) -> SweepSpec:
    """The sweep file at `path`, its top-level keys replaced by `overrides` (e.g. sizes, seeds, out), checked."""
    values = {**read_yaml(path), **(overrides or {})}
    known = [f.name for f in fields(SweepSpec)]
    unknown = set(values) - set(known)
    if unknown:  # (all of them, and the known ones: more than jsonargparse's first unknown key)
        raise LitAlignError(f"{path}: unknown sweep keys {', '.join(sorted(unknown))} (known: "
                            f"{', '.join(sorted(known))})")
    spec = _parse(SweepSpec, {k: v for k, v in values.items() if v is not None}, str(path))  # null: the default
    for key in ("objectives", "sizes", "noise"):
        if not getattr(spec, key):
            raise LitAlignError(f"{path}: `{key}` is missing or empty")
    if any(not 0 <= f <= 1 for f in spec.noise) or len(set(spec.noise)) < len(spec.noise):
        raise LitAlignError(f"{path}: `noise` must list distinct shares of labels flipped in [0, 1], not {spec.noise}")
    return spec


def noise_level(row: dict) -> float:
    """A result row's label noise (a results.csv cell is a string): 0 for a row written before the noise axis."""
    return float(row.get("noise") or 0)


@dataclass
class Run:
    index: int
    objective: str
    size: int
    seed: int
    noise: float = 0.0

    @property
    def name(self) -> str:
        # no suffix at noise 0: the names (and finished runs) of sweeps from before the noise axis stay valid
        return f"{self.objective}-n{self.size}-s{self.seed}" + (f"-noise{self.noise:g}" if self.noise else "")


class Sweep:
    ONLINE_SAMPLES = {"lit_align.objectives.OnlineDPO": 2}  # completions per prompt fixed by the objective

    def __init__(self, path: "str | Path", overrides: dict | None = None):
        self.path = Path(path).resolve()
        self.overrides = dict(overrides or {})  # handed on to every run started in another process (--overrides)
        self.spec = read_spec(Path(path), overrides)
        self.name = self.spec.name or self.path.stem
        self.out = Path(self.spec.out or f"logs/sweeps/{self.name}")
        # each entry split into its sweep-level keys (methods) and the LightningCLI config of its runs (objectives)
        self.methods: dict[str, MethodSpec] = {}
        self.objectives: dict[str, dict] = {}
        method_keys = {f.name for f in fields(MethodSpec)}
        for objective, entry in self.spec.objectives.items():
            entry = entry or {}
            self.methods[objective] = _parse(MethodSpec, {k: v for k, v in entry.items() if k in method_keys},
                                             f"{path}: objective {objective}")
            self.objectives[objective] = {k: v for k, v in entry.items() if k not in method_keys}
        if any(m.caa or m.then_caa for m in self.methods.values()):  # CAA's options, checked before any run
            try:
                self.spec.steer.validate()
            except LitAlignError as e:
                raise LitAlignError(f"{path}: {e}") from None
        # noise outermost: a level added at the end of `noise` leaves the array indices of the other runs as they were
        self.runs = [Run(i, o, n, s, f) for i, (f, o, n, s) in enumerate(
            (f, o, n, s) for f in self.spec.noise for o in self.objectives for n in self.spec.sizes
            for s in self.spec.seeds)]
        # results written by another run (`then_caa`): no array task of their own
        self.derived = {r.name: Run(-1, self.methods[r.objective].then_caa, r.size, r.seed, r.noise)
                        for r in self.runs if self.methods[r.objective].then_caa}

    # -- one run's config ------------------------------------------------------------------------------
    def _resolve(self, config: dict, where: Path) -> dict:
        """A config dict whose `config:` key (a file, relative to `where`) is read first and merged under it."""
        config = dict(config or {})
        base_file = config.pop("config", None)
        if base_file is None:
            return config
        p = Path(base_file)
        if not p.is_absolute() and not p.exists():
            p = where.parent / base_file
        return deep_merge(read_yaml(p), config)

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / run.name

    def config(self, run: Run) -> dict:
        """The full LightningCLI config of one run."""
        base = self._resolve({"config": self.spec.config} if self.spec.config else {}, self.path)
        base = deep_merge(base, self.spec.base)
        cfg = deep_merge(base, self._resolve(self.objectives[run.objective], self.path))
        data = cfg.setdefault("data", {}).setdefault("init_args", {})
        train = data.get("train", "builtin:sft")
        train = {"path": train} if isinstance(train, str) else dict(train)
        train["limit"] = run.size
        if self.spec.draw_per_seed:  # a built-in task draws other training examples for each seed
            train["seed"] = run.seed
        data["train"], data["seed"] = train, run.seed
        batch = int(data.get("batch_size", 8))
        trainer = cfg.setdefault("trainer", {})
        accumulate = int(trainer.get("accumulate_grad_batches", 1))
        trainer["max_steps"] = max(self.spec.min_steps,
                                   math.ceil(self.spec.epochs * run.size / (batch * accumulate)))
        per_prompt = self.reward_queries_per_prompt(run, cfg)
        if per_prompt:  # an online method's size is its label budget: reward queries, each prompt used once
            prompts = max(1, run.size // per_prompt)
            train["limit"] = prompts
            trainer["max_steps"] = max(1, math.ceil(prompts / (batch * accumulate)))
        if run.noise:  # the labeller errs on the training labels only: pairs swapped, or an online method's rewards
            noise = {"fraction": run.noise, "seed": run.seed}
            if per_prompt:
                cfg.setdefault("model", {}).setdefault("init_args", {})["label_noise"] = noise
            else:
                train["label_noise"] = noise
        trainer["max_epochs"] = -1
        trainer["check_val_every_n_epoch"] = 1_000_000   # the result is one validation of the final model
        trainer["num_sanity_val_steps"] = 0
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                             "init_args": {"save_dir": str(self.out / "runs"), "name": run.name, "version": 0,
                                           "default_hp_metric": False}}
        cfg["seed_everything"] = run.seed
        cfg["checkpoint"] = {**(cfg.get("checkpoint") or {}), "save_last": False, "save_top_k": 0}
        cfg["export"] = {**(cfg.get("export") or {}), "enabled": False}
        return cfg

    def reward_queries_per_prompt(self, run: Run, cfg: dict | None = None) -> int | None:
        """Reward queries (labels) one training prompt costs an online method whose entry says
        `budget: reward_queries` (its completions per prompt); None for a method whose size is training examples."""
        if self.methods[run.objective].budget == "examples":
            return None
        cfg = self.config(run) if cfg is None else cfg
        model = cfg.get("model") or {}
        return self.ONLINE_SAMPLES.get(model.get("class_path"),
                                       int((model.get("init_args") or {}).get("num_generations", 4)))

    # -- running ---------------------------------------------------------------------------------------
    def result_path(self, run: Run) -> Path:
        return self.run_dir(run) / "result.json"

    def run_one(self, run: Run, quiet: bool = True) -> dict:
        """Train and validate one run in this process through LitAlignCLI (a CAA run: extract, select and
        evaluate a steering vector instead); write and return its result."""
        if self.result_path(run).exists():
            return json.loads(self.result_path(run).read_text())
        from lit_align.lightning_cli import output_to, run_in_process

        run_dir = self.run_dir(run)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an unfinished earlier attempt: start over
        run_dir.mkdir(parents=True)
        config_path = run_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config(run), sort_keys=False))
        method = self.methods[run.objective]
        start = time.perf_counter()
        log = open(run_dir / "log.txt", "w") if quiet else None
        result = None
        try:
            with output_to(log):
                if method.caa:
                    result = self._caa_run(run, config_path, start)
                else:
                    cli = run_in_process(config_path)
                    metrics: dict[str, float] = {}
                    for d in cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False):
                        metrics.update({k: float(v) for k, v in d.items()})
                    metrics.update(self._generation_metrics(cli.model.model, cli.datamodule))
                    if method.then_caa:  # CAA on top of the trained policy, from the same training pairs
                        t = time.perf_counter()
                        derived = self.derived[run.name]
                        self.run_dir(derived).mkdir(parents=True, exist_ok=True)
                        caa, train = self._caa_metrics(cli.model.model, cli.model.tokenizer, config_path)
                        self._write_result(derived, caa, train.kept, cli.trainer.global_step, time.perf_counter() - t,
                                           train.flipped)
        except BaseException:
            if log:
                traceback.print_exc(file=log)
                log.close()
                print(f"run {run.name} failed; see {run_dir / 'log.txt'}", file=sys.stderr, flush=True)
            raise
        if log:
            log.close()
        if result is not None:
            return result
        train = cli.datamodule.summaries["train"]
        # labels flipped: the training pairs swapped, or an online method's rewards turned over (objectives/online.py)
        flipped = train.flipped + getattr(cli.model, "labels_flipped", 0)
        return self._write_result(run, metrics, train.kept, cli.trainer.global_step, time.perf_counter() - start,
                                  flipped)

    def _write_result(self, run: Run, metrics: dict, examples: int, steps: int, wall_s: float,
                      flipped: int = 0) -> dict:
        # labels: what the method was given: training examples (pairs, completions), or an online method's reward
        # queries (prompts x completions per prompt), so offline and online methods share one axis
        per_prompt = self.reward_queries_per_prompt(run) if run.index >= 0 else None
        labels = examples * per_prompt if per_prompt else examples
        result = {"run": run.name, "objective": run.objective, "size": run.size, "seed": run.seed,
                  "noise": run.noise, "flipped": flipped, "train_examples": examples, "labels": labels,
                  "steps": steps, "wall_s": round(wall_s, 2), **metrics}
        self.result_path(run).write_text(json.dumps(result, indent=1))
        return result

    # -- steering and generation -----------------------------------------------------------------------
    def _generate_sets(self) -> tuple[dict, int]:
        """{name: (source, scorer)} of the `generate:` section, and its max_new_tokens."""
        generate = self.spec.generate
        return {name: (src, generate.scorer) for name, src in generate.sets.items()}, generate.max_new_tokens

    def _generation_metrics(self, model, datamodule) -> dict[str, float]:
        from lit_align.steering.caa import generation_metrics

        sets, max_new = self._generate_sets()
        return generation_metrics(model, datamodule, sets, max_new)

    def _caa_datamodule(self, config_path: Path, tokenizer):
        """The run's data module (its `size` training pairs, its evaluation sets) plus the CAA selection pairs."""
        from lit_align.data.datamodule import AlignDataModule
        from lit_align.steering.caa import SELECT_SPLIT

        opts = self.spec.steer.validate()
        args = dict((read_yaml(config_path).get("data") or {}).get("init_args") or {})
        args["val"] = {**(args.get("val") or {}), SELECT_SPLIT: opts.select}
        dm = AlignDataModule(**args)
        dm.connect(tokenizer, LAYOUTS["pair"])
        dm.setup("fit")
        return dm, opts

    def _caa_metrics(self, model, tokenizer, config_path: Path):
        """CAA metrics of `model` (lit_align/steering/caa.py) and the summary of the training pairs the vector came
        from (their number kept, and flipped by label noise: the run's train source is read as its fit reads it)."""
        from lit_align.steering.caa import caa_metrics

        dm, opts = self._caa_datamodule(config_path, tokenizer)
        sets, max_new = self._generate_sets()
        return caa_metrics(model, dm, opts, sets, max_new), dm.summaries["train"]

    def _policy(self, config_path: Path):
        from lit_align.modeling.models import policy_spec

        return policy_spec(read_yaml(config_path))

    def _caa_run(self, run: Run, config_path: Path, start: float) -> dict:
        """A CAA run: no training; the policy of the run's config, steered by a vector from its training pairs."""
        import lightning

        from lit_align.modeling.models import load_model, load_tokenizer

        lightning.seed_everything(run.seed, verbose=False)
        spec = self._policy(config_path)
        tokenizer = load_tokenizer(spec)
        metrics, train = self._caa_metrics(load_model(spec, tokenizer), tokenizer, config_path)
        return self._write_result(run, metrics, train.kept, 0, time.perf_counter() - start, train.flipped)

    def run_all(self, subprocess: bool = False, jobs: int = 1) -> None:
        """Every run not finished yet: one after another in this process, or each in its own (`subprocess`), or
        `jobs` > 1 of them at once in their own processes, torch's threads split among them (side_by_side.py)."""
        if jobs > 1:
            from lit_align.sweep.side_by_side import run_side_by_side

            return run_side_by_side([(self, r) for r in self.runs], jobs)
        start = time.perf_counter()
        for run in self.runs:
            if self.result_path(run).exists():
                print(f"[{run.index + 1}/{len(self.runs)}] {run.name}: done already", flush=True)
                continue
            t = time.perf_counter()
            if subprocess:
                import subprocess as sp

                sp.run([sys.executable, "-m", "lit_align.sweep", "run", str(self.path), *self.override_args(),
                        "--index", str(run.index)], check=True)
                result = json.loads(self.result_path(run).read_text())
            else:
                result = self.run_one(run)
            shown = ", ".join(f"{m}={result[m]:.3f}" for m in self.metrics([result]) if m in result)
            print(f"[{run.index + 1}/{len(self.runs)}] {run.name}: {result['steps']} steps, "
                  f"{time.perf_counter() - t:.0f} s; {shown}", flush=True)
        print(f"sweep: {len(self.runs)} runs in {time.perf_counter() - start:.0f} s", flush=True)

    # -- results ---------------------------------------------------------------------------------------
    def results(self) -> list[dict]:
        runs = self.runs + list(self.derived.values())
        # (a result written before the noise axis existed is a noise-0 run)
        return [{"noise": 0.0, "flipped": 0, **json.loads(self.result_path(r).read_text())}
                for r in runs if self.result_path(r).exists()]

    def metrics(self, rows: list[dict]) -> list[str]:
        if self.spec.metrics:
            return list(self.spec.metrics)
        names = sorted({k for r in rows for k in r if k.endswith("logps/accuracy")})
        return names or sorted({k for r in rows for k in r if k.endswith("/loss")})

    def collect(self, rows: list[dict] | None = None, repeats: str | None = None) -> tuple[Path, Path | None]:
        """Write <out>/results.csv (one row per finished run, or `rows`) and <out>/<name>.png; `repeats` says in
        the figure's title what a band is taken over (default: "<k> seeds")."""
        rows = self.results() if rows is None else rows
        if not rows:
            raise LitAlignError(f"no finished runs under {self.out / 'runs'}")
        fixed = ["run", "objective", "size", "seed", "noise", "flipped", "train_examples", "labels", "steps", "wall_s"]
        columns = fixed + sorted({k for r in rows for k in r} - set(fixed))
        self.out.mkdir(parents=True, exist_ok=True)
        csv_path = self.out / "results.csv"
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
        png = None
        try:
            from lit_align.plots import plot_sweep
        except ImportError:  # pragma: no cover
            pass
        else:
            try:
                online = any(m.budget == "reward_queries" for m in self.methods.values())
                x, by = ("labels", "labels: training examples or reward queries") if online else \
                    ("train_examples", "training examples")
                noisy = len({noise_level(r) for r in rows}) > 1   # one column of panels per level
                png = plot_sweep(rows, self.metrics(rows), self.out / f"{self.name}.png", x=x,
                                 panels="noise" if noisy else None,
                                 title=f"{self.name}: final model, by {by} "
                                       f"({repeats or f'{len(self.spec.seeds)} seeds'})")
            except ImportError:
                print("matplotlib is not installed: no figure (pip install matplotlib)", file=sys.stderr)
        done = {r["run"] for r in rows}
        missing = sum(r.name not in done for r in self.runs + list(self.derived.values()))
        print(f"wrote {csv_path} ({len(rows)} runs{f', {missing} not finished' if missing else ''})"
              + (f" and {png}" if png else ""), flush=True)
        return csv_path, png

    # -- SLURM -----------------------------------------------------------------------------------------
    def override_args(self) -> list[str]:
        """The command-line arguments that give a run in another process (a subprocess, a SLURM array task) this
        sweep's overrides: without them it would read the file's own sizes, seeds, out and base, and its run i
        would be another run."""
        return ["--overrides", json.dumps(self.overrides, separators=(",", ":"))] if self.overrides else []

    def slurm_script(self, python: str | None = None, workdir: str | None = None) -> str:
        """An sbatch job-array script: task i runs run i (`python -m lit_align.sweep run SWEEP --index i`)."""
        s = self.spec.slurm
        python = python or sys.executable
        workdir = workdir or os.getcwd()
        logs = (self.out / "slurm").resolve() if not self.out.is_absolute() else self.out / "slurm"
        array = f"0-{len(self.runs) - 1}" + (f"%{s.max_parallel}" if s.max_parallel else "")
        lines = ["#!/bin/bash",
                 f"#SBATCH --job-name={self.name}",
                 f"#SBATCH --array={array}",
                 f"#SBATCH --output={logs}/%A_%a.out",
                 f"#SBATCH --time={s.time}",
                 f"#SBATCH --cpus-per-task={s.cpus_per_task}",
                 "#SBATCH --ntasks=1"]
        if s.gres:
            lines.append(f"#SBATCH --gres={s.gres}")
        if s.partition:
            lines.append(f"#SBATCH --partition={s.partition}")
        lines += [f"#SBATCH {opt}" for opt in s.sbatch]
        runs = "\n".join(f"#   {r.index}: {r.name}" for r in self.runs)
        lines += ["", f"# {len(self.runs)} runs of sweep {self.path} (array index: run):", runs, "",
                  "set -euo pipefail", f"cd {shlex.quote(workdir)}"]
        if s.setup:
            lines.append(s.setup)
        lines += ["export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0} TOKENIZERS_PARALLELISM=false",
                  f"srun {shlex.quote(python)} -m lit_align.sweep run {shlex.quote(str(self.path))} "
                  + "".join(f"{shlex.quote(a)} " for a in self.override_args()) + "--index \"$SLURM_ARRAY_TASK_ID\""]
        return "\n".join(lines) + "\n"

    def write_slurm(self, python: str | None = None, workdir: str | None = None) -> tuple[Path, Path]:
        """Write <out>/sweep.sbatch and <out>/submit.sh (submits the array, then `collect` after it)."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "slurm").mkdir(exist_ok=True)
        sbatch = self.out / "sweep.sbatch"
        sbatch.write_text(self.slurm_script(python, workdir))
        python = python or sys.executable
        workdir = workdir or os.getcwd()
        collect = (f"cd {shlex.quote(workdir)} && {shlex.quote(python)} -m lit_align.sweep collect "
                   f"{shlex.quote(str(self.path))}" + "".join(f" {shlex.quote(a)}" for a in self.override_args()))
        submit = self.out / "submit.sh"
        submit.write_text("#!/bin/bash\n# Submit the sweep's job array, then collect its results when every task has ended.\n"
                          "set -euo pipefail\n"
                          f"job=$(sbatch --parsable {shlex.quote(str(sbatch.resolve()))})\n"
                          f"sbatch --dependency=afterany:$job --job-name={self.name}-collect "
                          f"--output={shlex.quote(str((self.out / 'slurm').resolve()))}/collect_%j.out "
                          f"--wrap={shlex.quote(collect)}\n"
                          "echo \"submitted array job $job\"\n")
        submit.chmod(0o755)
        return sbatch, submit
