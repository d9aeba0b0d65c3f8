"""TensorBoard that opens on the curves that matter, for every objective.

- **Custom Scalars** (a layout written into the run's event file): train and every validation set on one chart
  per metric: "loss: train vs validation", DPO's rewards and log-probs chosen vs rejected, margins, accuracies,
  IW-SFT's weight statistics, A/B match probability, generation scores, the learning rate; ID next to OOD
  (val_id, val_ood, ... on the same chart). The layout is built from the metric names the run really logged
  (so it fits every objective and data set without a list to keep in sync), written at the first validation
  and again whenever new names appear; the probes' charts (callbacks/probes.py) are part of it.
- **Scalars / Time Series**: no `epoch` curve (Lightning adds one to every logged step; it opened the list); the
  learning rate is one curve, `train/lr`, logged by the objective (objectives/base.py) instead of Lightning's
  LearningRateMonitor, which drew one identical curve per parameter group.
- **HParams**: the run's resolved config (the YAML `--print_config` shows), flattened (`model.init_args.beta`,
  ...): the model, data and a few trainer options, with the validation losses as its metrics; the whole config
  as text in the Text tab.
Rank 0 writes; other loggers are left alone.
"""

from __future__ import annotations

import os
import re

import yaml
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger

# categories in the order they appear: (title, the metric names' first component)
CATEGORIES = [("loss and accuracy", None), ("rewards (β·log π/π_ref)", "rewards"), ("log-probs (policy)", "logps"),
              ("importance weights", "weights"), ("A/B contrast", "ab"), ("generations", "gen"),
              ("rewards per function (online RL)", "reward"), ("rollouts (online RL)", "rollout"),
              ("policy update (online RL)", "policy"),
              ("optimization", "lr")]
# charts within a category: these (the metric's last component) first, in this order, then the rest by name
_FIRST = ["loss", "token_accuracy", "chosen", "rejected", "margins", "accuracy"]
_PAIRED = ("chosen", "rejected")
# the HParams tab: what tells runs apart (all the rest of the config is in the Text tab)
HPARAMS = ("model.", "data.", "seed_everything", "trainer.max_steps", "trainer.max_epochs",
           "trainer.accumulate_grad_batches", "trainer.precision", "trainer.devices", "trainer.num_nodes",
           "trainer.strategy", "trainer.gradient_clip_val")


def _tensorboard(trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _chart(tags: list[str]) -> list:
    return ["Multiline", [f"^{re.escape(t)}$" for t in sorted(tags, key=_set_order)]]


def _set_order(tag: str) -> tuple:
    split = tag.split("/", 1)[0]
    return (split != "train", split != "val", tag)  # train first, then the default validation set, then the rest


def layout_for(tags: set[str]) -> dict:
    """The custom-scalars layout for these logged tags: {category: {chart title: ["Multiline", [regex, ...]]}}.
    A tag is `<split>/<metric>`: split `train`, `val` or `val_<set>`; probe tags are the probes' own."""
    by_metric: dict[str, list[str]] = {}
    for tag in tags:
        split, _, metric = tag.partition("/")
        if metric and (split == "train" or split.startswith("val")):
            by_metric.setdefault(metric, []).append(tag)
    layout: dict[str, dict] = {}
    for title, group in CATEGORIES:
        charts: dict[str, list] = {}
        # a category holds its group's metrics ("reward" alone is a headline, charted once, beside the loss)
        names = [m for m in by_metric if (m.split("/")[0] == group and ("/" in m or m == "lr") if group
                                          else "/" not in m and m != "lr")]
        names = sorted(names, key=lambda m: (_FIRST.index(m.rsplit("/", 1)[-1]) if m.rsplit("/", 1)[-1] in _FIRST
                                             else len(_FIRST), m))
        done = set()
        for metric in names:
            if metric in done:
                continue
            base, _, last = metric.rpartition("/")
            pair = [f"{base}/{p}" if base else p for p in _PAIRED]
            if last in _PAIRED and all(p in by_metric for p in pair):
                charts[f"{base or metric}: chosen vs rejected"] = _chart(by_metric[pair[0]] + by_metric[pair[1]])
                done.update(pair)
                continue
            label = "loss: train vs validation" if metric == "loss" else metric
            charts[label] = _chart(by_metric[metric])
            done.add(metric)
        if charts:
            layout[title] = charts
    return layout


def flat_config(config: dict, prefix: str = "") -> dict:
    """{"model": {"init_args": {"beta": 0.1}}} -> {"model.init_args.beta": 0.1}; lists and None as text."""
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class TensorBoardSetup(Callback):
    def __init__(self):
        self.config: dict | None = None  # the resolved config; set by the CLI (cli/__init__.py)
        self.tags: set[str] = set()         # the metric names logged so far
        self.last_layout: dict | None = None
        self._renamed = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        logger = _tensorboard(trainer)
        if logger is None or not trainer.is_global_zero or self._renamed:
            return
        log_metrics = logger.log_metrics

        def without_epoch(metrics, step=None):  # Lightning adds `epoch` to every logged step
            return log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

        logger.log_metrics = without_epoch
        self._renamed = True

    def on_fit_start(self, trainer, pl_module) -> None:
        self._write_config(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit":
            self._write_config(trainer)

    def _write_config(self, trainer) -> None:
        logger = _tensorboard(trainer)
        if logger is None or not trainer.is_global_zero or self.config is None:
            return
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"{name}/loss": 0.0 for name in sorted(getattr(trainer.datamodule, "splits", {}) or {})
                   if name.startswith("val")}
        writer = logger.experiment._get_file_writer()
        shown = {k: v for k, v in flat_config(self.config).items() if k.startswith(HPARAMS)}
        for summary in hparams(shown, metrics or {"val/loss": 0.0}):
            writer.add_summary(summary)
        first = {k: self.config[k] for k in ("model", "data", "trainer") if k in self.config}
        text = yaml.safe_dump({**first, **self.config}, sort_keys=False, default_flow_style=False)
        logger.experiment.add_text("config", "```\n" + text + "\n```", global_step=trainer.global_step)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        write_layout(trainer, set(trainer.callback_metrics))


def name_evaluation_run(logger, subcommand: str) -> None:
    """`validate` / `test` / `predict` log under `<experiment>/<subcommand>_N`, not as the next `version_N`
    beside the training runs (where TensorBoard showed them as if they were training runs)."""
    if not isinstance(logger, TensorBoardLogger) or logger._version is not None:  # (a version given: kept)
        return
    root = logger.root_dir
    taken = {e.name for e in os.scandir(root)} if os.path.isdir(root) else set()
    n = 0
    while f"{subcommand}_{n}" in taken:
        n += 1
    logger._version = f"{subcommand}_{n}"  # TensorBoardLogger(version=...) stores it here, read lazily


def write_layout(trainer, tags: set[str]) -> None:
    """Write the custom-scalars layout of the tags logged so far plus the charts of any callback that declares its
    own (a `tensorboard_layout()` method returning {category: {chart: [...]}}, e.g. Probes), when it changed."""
    logger = _tensorboard(trainer)
    if logger is None or not trainer.is_global_zero:
        return
    setup = next((cb for cb in trainer.callbacks if isinstance(cb, TensorBoardSetup)), None)
    if setup is not None:
        setup.tags |= set(tags)
        tags = setup.tags
    layout = layout_for(set(tags))
    for cb in trainer.callbacks:
        charts = getattr(cb, "tensorboard_layout", None)
        if callable(charts):
            layout.update(charts())
    if setup is not None and setup.last_layout == layout:
        return
    logger.experiment.add_custom_scalars(layout)
    if setup is not None:
        setup.last_layout = layout
