"""LitAlignCLI: LightningCLI with lit_align's defaults, for `lit_align fit|validate|test|predict --config X.yaml`
(cli/__init__.py dispatches the commands; sweeps and experiments run it in process).

The objective (`model:`) and the data module (`data:`) are chosen by `class_path` in the YAML. Run-time
values are wired here, in code: the data module gets the objective's tokenizer (hence pad id and
vocabulary) and its batch layout (layouts.py). Defaults: TensorBoard under logs/<experiment>/,
checkpoints with last.ckpt under logs/<experiment>/checkpoints/, a rich progress bar (plain lines without a
terminal), the final model exported in Hugging Face format, seed 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch.callbacks import ProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from lit_align.callbacks import ExportHF, GenerationWriter, NonFiniteGuard, RunCheckpoint, SlurmRequeue  # noqa: E402
from lit_align.callbacks.final_validation import FinalValidation  # noqa: E402
from lit_align.callbacks.collective_timeout import CollectiveTimeout  # noqa: E402
from lit_align.callbacks.progress import default_progress_bar, plain_model_summary  # noqa: E402
from lit_align.callbacks.tensorboard import TensorBoardSetup, name_evaluation_run  # noqa: E402
from lit_align import config_yaml  # noqa: E402
from lit_align.data.datamodule import AlignDataModule  # noqa: E402
from lit_align.errors import LitAlignError  # noqa: E402
from lit_align.noise import silence  # noqa: E402
from lit_align.objectives.base import Objective  # noqa: E402
from lit_align.resume import (FORCE, RUN_SETTINGS, changed_run_settings, changed_settings,  # noqa: E402
                              checkpoint_meta, finished_run, occupied, run_settings)


DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".txt", ".tsv", ".gz"}


def _data_files_are_paths() -> None:
    """jsonargparse reads an existing file given for a class-typed option (`train: Source | str`) as a sub-config
    and uses its *contents* as the value: `train: data.csv` became the CSV's text. A data file stays its path (a
    .json file only when it holds no config object)."""
    from jsonargparse import _typehints

    original = _typehints.parse_value_or_config
    if getattr(original, "_lit_align", False):
        return

    def parse_value_or_config(value, enable_path=True, simple_types=False):
        text = getattr(value, "val", value)
        if enable_path and type(text) is str and DATA_SUFFIXES & {s.lower() for s in Path(text).suffixes}:
            if Path(text).suffix.lower() == ".json":  # a sub-config, or data?
                try:
                    parsed, path = original(value, enable_path, simple_types)
                except Exception:
                    parsed, path = None, None
                if path is not None and isinstance(parsed, dict) and not any(isinstance(v, list) for v in
                                                                             parsed.values()):
                    return parsed, path  # (records hold a list: [...] or {"data": [...]})
            return original(value, False, simple_types)
        return original(value, enable_path, simple_types)

    parse_value_or_config._lit_align = True
    _typehints.parse_value_or_config = parse_value_or_config


_data_files_are_paths()
config_yaml.install()  # a key given twice is refused; YAML errors name the config file and line
silence()


_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
          "Given value:", "Expected a NoneType")


def parse_error_sentence(message: str) -> str:
    """jsonargparse's nested parse error in one sentence: the option's full name and what is wrong with it.
    'Parser key "data": Does not validate against any of the Union subtypes ... Problem with given class_path
    'lit_align.data.AlignDataModule': Parser key "batch_size": Expected a <class 'int'>. Got value: abc'
    becomes "option data.init_args.batch_size: Expected a int. Got value: abc"."""
    keys, said = [], []
    for line in message.splitlines():
        text = line.strip().removeprefix("- ").strip()
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if key:
            keys.append(key.group(1))
            text = key.group(2)
        class_path = re.match(r"Problem with given class_path '([^']+)':\s*(.*)", text)
        if class_path:
            if "init_args" not in keys:  # (the objective's or data module's; a nested spec has none on the CLI)
                keys.append("init_args")
            text = class_path.group(2)
        text = re.sub(r"<class '([\w.]+)'>", r"\1", text).strip()
        # a Literal option: "must be one of cosine, linear, constant, not 'step'"
        text = re.sub(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)",
                      lambda m: f"must be one of {m.group(1).replace(chr(39), '')}, not '{m.group(2)}'", text)
        if text and not text.startswith(_NOISE) and text not in said:
            said.append(text)
    where = f"option {'.'.join(keys)}: " if keys else ""
    return where + " ".join(said).rstrip(":")


class LitAlignArgumentParser(LightningArgumentParser):
    """A command line or config that does not parse is said in one sentence (exit 2), not after jsonargparse's
    90-line usage text."""

    def error(self, message: str, ex: Exception | None = None):
        from jsonargparse._common import debug_mode_active

        if not self.exit_on_error or debug_mode_active():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = ["lit_align", *parser.prog.replace(" [options]", "").split()[1:]]  # (prog: sys.argv[0] ...)
        print(f"\nlit_align: error: {' '.join(parse_error_sentence(message).split())} (all options: "
              f"{' '.join(command)} --help)", file=sys.stderr, flush=True)
        sys.exit(2)


class LitAlignCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True):
        super().__init__(
            model_class=Objective, subclass_mode_model=True, parser_class=LitAlignArgumentParser,
            datamodule_class=AlignDataModule, subclass_mode_data=True,
            trainer_defaults={
                "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                           "init_args": {"save_dir": "logs", "name": "default", "default_hp_metric": False}},
                "callbacks": [default_progress_bar(), TensorBoardSetup(), CollectiveTimeout(), FinalValidation()],
                "log_every_n_steps": 10,
            },
            seed_everything_default=0,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args, run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ExportHF, "export")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(SlurmRequeue, "requeue")
        parser.add_lightning_class_args(GenerationWriter, "generate")  # `predict`'s options (inert in fit)
        # Without a config, `lit_align fit` trains the embedded tiny default (SFT of builtin:tiny on builtin:sft),
        # and overlay configs (configs/strategies/*.yaml: trainer options only) parse on their own.
        parser.set_defaults({"model": {"class_path": "lit_align.objectives.SFT"},
                             "data": {"class_path": "lit_align.data.AlignDataModule"}})

    def _parse_ckpt_path(self) -> None:
        # the first thing after parsing (Lightning reads an explicit checkpoint's hyperparameters here): refuse
        # bad trainer options and a missing or damaged checkpoint before anything is loaded
        if self.config.get("subcommand"):
            config = self.config[self.config.subcommand]
            check_trainer_options(config.get("trainer") or {})
            ckpt_path = config.get("ckpt_path")
            if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
                check_checkpoint_file(str(ckpt_path))
            if self.config.subcommand == "fit":
                return  # the checkpoint's model does not silently replace the command line's (before_fit compares)
            if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
                log_beside_checkpoint(config, str(ckpt_path))
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule.connect(self.model.tokenizer, self.model.layout, self.model.train_sampling_weights,
                                self.model.repeat_steps)
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        resolved = json.loads(json.dumps(config.as_dict(), default=str))  # (paths and the like as text)
        resolved.pop("config", None)
        for cb in self.trainer.callbacks:
            if isinstance(cb, TensorBoardSetup):
                cb.config = resolved  # the HParams tab and the Text tab show it
            if isinstance(cb, RunCheckpoint):
                cb.run_settings = run_settings(resolved, self.trainer)  # in each checkpoint, compared on resume

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """The default callbacks, less the progress bar with `enable_progress_bar: false` or when the config brings
        its own (Lightning refuses either combination)."""
        given = config.get("callbacks")
        own = [*([] if given is None else given if isinstance(given, list) else [given]), *callbacks]
        keep = []
        for cb in self.trainer_defaults.get("callbacks", []):
            if isinstance(cb, ProgressBar) and (config.get("enable_progress_bar") is False
                                                or any(isinstance(c, ProgressBar) for c in own)):
                continue
            keep.append(cb)
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": keep}
        subcommand = self.config.get("subcommand")
        if subcommand in ("validate", "test", "predict"):
            loggers = config.get("logger")
            for logger in loggers if isinstance(loggers, list) else [loggers]:
                name_evaluation_run(logger, subcommand)
        try:
            return plain_model_summary(super()._instantiate_trainer(config, callbacks))  # (one line in a log)
        except (TypeError, ValueError) as e:  # Lightning's word on an option's value (devices, precision, ...)
            raise LitAlignError(f"trainer options: {e}") from e

    def _run_checkpoint(self) -> RunCheckpoint | None:
        return next((cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, RunCheckpoint)), None)

    def before_fit(self) -> None:
        """Which checkpoint this fit continues, and whether it may (lit_align/resume.py has the rules).
        A fresh fit into an experiment folder holding another run's checkpoints is refused. `--ckpt_path last`
        takes the newest complete checkpoint, or starts from scratch where there is none (one line). Resuming with
        settings other than the checkpoint's (model, data, trainer) is refused with the list of changes (those that
        only change how the numbers are computed are applied and said), unless forced. A checkpoint whose run is
        finished (its step or epoch limit reached) is not trained again: say so and how to train further, rewriting
        nothing."""
        config = self.config_init[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        callback = self._run_checkpoint()
        if ckpt_path in ("best", "hpc", "registry"):
            return
        if callback is not None and not callback.force_resume:
            callback._default_dirpath(self.trainer)
            outside = ckpt_path not in (None, "last") and os.path.abspath(os.path.dirname(str(ckpt_path))) != \
                os.path.abspath(str(callback.dirpath))
            # (only a fit that would not continue this folder's run reads its checkpoints: their checksums cost a
            # full read each)
            own = callback.complete_checkpoints() if ckpt_path is None or outside else []
            if own:
                ckpt = checkpoint_meta(own[-1]) or {}
                raise LitAlignError(occupied(str(callback.dirpath), own[-1], ckpt.get("global_step"),
                                             str(ckpt_path) if ckpt_path else None))
        if ckpt_path is None:
            return
        if ckpt_path == "last":
            if callback is None:
                return
            found = callback._find_last_checkpoints(self.trainer)
            if not found:
                _say(self.trainer, f"--ckpt_path last: no checkpoint in {callback.dirpath}: starting from scratch")
                config["ckpt_path"] = None
                return
            ckpt_path = max(found, key=os.path.getmtime)
            config["ckpt_path"] = ckpt_path  # Lightning loads this one (not its own pick among last*.ckpt)
        given = str(self.config[self.subcommand].get("ckpt_path"))  # as written: "last", or the file
        ckpt = checkpoint_meta(str(ckpt_path))
        if ckpt is None:
            return
        uses_total = self.model.optim_spec.uses_total_steps()
        objective = type(self.model)
        applied, refused = changed_settings(ckpt.get("hyper_parameters") or {}, dict(self.model.hparams),
                                            objective.compute_only_settings, objective.added_settings,
                                            objective.removed_settings)
        if callback is not None and callback.run_settings is not None and RUN_SETTINGS in ckpt:
            more_applied, more_refused = changed_run_settings(ckpt[RUN_SETTINGS], callback.run_settings, uses_total)
            applied, refused = applied + more_applied, refused + more_refused
        forced = callback is not None and callback.force_resume
        if refused and not forced:
            raise LitAlignError(
                f"--ckpt_path {given}: this command line changes settings the checkpoint {ckpt_path} was trained with: "
                f"{'; '.join(refused)}. Resuming continues that run (its model, optimizer state, schedule and data "
                "order), so resume with its settings; for a run with the new ones, give it another experiment name "
                "(--trainer.logger.init_args.name NAME), starting from the run's exported model if wanted "
                f"(--model.init_args.policy.name <its version dir>/hf_model); or resume anyway with {FORCE}.")
        if refused:
            _say(self.trainer, f"--ckpt_path {given}: {FORCE}: resuming with changed settings: {'; '.join(refused)}")
        if applied:
            _say(self.trainer, f"--ckpt_path {given}: applying compute-only changes: {'; '.join(applied)}")
        finished = finished_run(ckpt, str(ckpt_path), self.trainer, given=given,
                                schedule_uses_total=uses_total and not forced)
        if finished:
            raise NothingToDo(finished)

    def _say_where_logged(self) -> None:
        log_dir = self.trainer.log_dir  # (a collective under DDP: every rank asks)
        if self.trainer.is_global_zero and log_dir:
            print(f"TensorBoard logs: {log_dir}   (view: tensorboard --logdir {self.trainer.logger.save_dir})", flush=True)

    def after_validate(self) -> None:
        self._say_where_logged()

    def after_test(self) -> None:
        self._say_where_logged()

    def after_fit(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under DDP/FSDP: every rank asks
        if not trainer.is_global_zero:
            return
        lines = [f"TensorBoard logs: {log_dir}   (view: tensorboard --logdir {trainer.logger.save_dir})"]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.dirpath:
            lines.append(f"checkpoints:      {ckpt.dirpath}   (resume: add --ckpt_path last)")
        for cb in trainer.callbacks:
            if isinstance(cb, ExportHF) and cb.saved_to:
                lines.append(f"final model:      {cb.saved_to}")
        print("\n".join(lines), flush=True)


def log_beside_checkpoint(config, ckpt_path: str) -> None:
    """`validate / test / predict --ckpt_path <save_dir>/<experiment>/checkpoints/X.ckpt` with the default logger
    (no --config naming the experiment): log under the checkpoint's experiment, not under logs/default/, so the
    evaluation lands beside the run (and Lightning does not warn that the checkpoint folder changed)."""
    path = Path(ckpt_path)
    logger = (config.get("trainer") or {}).get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    if path.parent.name != "checkpoints" or init_args is None or init_args.get("name") != "default" or \
            not str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return
    init_args["save_dir"] = str(path.parent.parent.parent)
    init_args["name"] = path.parent.parent.name


class NothingToDo(Exception):
    """`fit` has nothing to do (a finished run resumed): the CLI says why and exits 0."""


def _say(trainer, message: str) -> None:
    if trainer.is_global_zero and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"lit_align: {message}", file=sys.stderr, flush=True)


def check_trainer_options(trainer: dict) -> None:
    """Refuse, before anything is loaded, trainer options that would fail later with a traceback."""
    accumulate = trainer.get("accumulate_grad_batches")
    if accumulate is not None and (isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1):
        raise LitAlignError(f"trainer.accumulate_grad_batches must be an integer >= 1, not {accumulate!r}")
    for key in ("max_steps", "max_epochs"):
        value = trainer.get(key)
        if isinstance(value, int) and value < -1:
            raise LitAlignError(f"trainer.{key} must be >= 0 (or -1: no limit), not {value}")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval <= 0:
        raise LitAlignError(f"trainer.val_check_interval must be > 0 (a number of batches, or a fraction of an "
                            f"epoch), not {interval}")


def check_checkpoint_file(path: str) -> None:
    """`--ckpt_path FILE`: say what is wrong with it (missing, truncated, not a checkpoint, corrupt) in one
    sentence, rather than the traceback torch.load would give."""
    from lit_align.callbacks.checkpoint import checkpoint_problem

    problem = checkpoint_problem(path)
    if problem:
        raise LitAlignError(f"--ckpt_path {path}: {problem}. Give a complete checkpoint, or --ckpt_path last "
                            "(the newest complete last.ckpt of the experiment).")


def run_in_process(config: "str | Path", log=None) -> LitAlignCLI:
    """`lit_align fit --config <config>` in this process (sweeps and experiments), its output (stdout, stderr,
    Lightning's log lines) to the open file `log` unless None; returns the CLI (its trainer, model and data module
    for what follows the fit)."""
    with output_to(log):
        return LitAlignCLI(args=["fit", "--config", str(config)])


@contextlib.contextmanager
def output_to(stream):
    """Send stdout, stderr and Lightning's log messages to `stream` (None: leave them alone)."""
    if stream is None:
        yield
        return
    import logging

    def swap(h: logging.StreamHandler, new):
        old, h.stream = h.stream, new  # not setStream: it flushes the old stream, which may be closed by now
        return old

    handlers = [h for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lit_align")
                for h in logging.getLogger(name).handlers if isinstance(h, logging.StreamHandler)]
    before = [swap(h, stream) for h in handlers]
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        for h, old in zip(handlers, before):
            swap(h, old)
        # handlers created during the run (a logger set up on first import) captured the redirected stderr:
        # point them at the process's stderr, or they write to `stream` after it is closed
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for h in getattr(lg, "handlers", []):
                if isinstance(h, logging.StreamHandler) and h.stream is stream:
                    swap(h, sys.__stderr__)
