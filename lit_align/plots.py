"""Figures: probe grids from TensorBoard event files (one panel per probe category, one line per run), sweep
curves (a metric against the number of training examples, one line per objective) and steering curves (p_match
against the multiplier, one line per layer, one panel per evaluation set).

matplotlib (a dependency of the package) is imported only inside the plotting functions, so that importing
lit_align stays fast.

    python scripts/plot_probes.py sft=logs/probes_sft dpo=logs/probes_dpo -o docs/figures/probes.png
"""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path


def event_files(path: "str | Path") -> list[str]:
    """The TensorBoard event files of a run: `path` is an event file, a version directory, or a directory
    holding versions (all of them are read, in the order they were written, e.g. a run and its resumption)."""
    path = str(path)
    if os.path.isfile(path):
        return [path]
    files = glob.glob(os.path.join(path, "**", "events.out.tfevents.*"), recursive=True)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {path}")
    return sorted(files, key=os.path.getmtime)


def read_scalars(path: "str | Path", prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...] sorted by step} of the scalars under `path` whose tag starts with `prefix`.
    A step logged again (a resumed run) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    for f in event_files(path):
        ea = EventAccumulator(f, size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            if tag.startswith(prefix):
                merged.setdefault(tag, {}).update({e.step: e.value for e in ea.Scalars(tag)})
    return {tag: sorted(points.items()) for tag, points in merged.items()}


def _grid(n: int, ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def plot_probes(runs: "dict[str, str | Path]", out: "str | Path", sets: list[str] | None = None,
                categories: list[str] | None = None, per_token: bool = False, delta: bool = False,
                ncols: int = 4, title: str | None = None) -> Path:
    """A grid of probe curves: one panel per (set, category), one line per run.

    Args:
        runs: {label: event file or log directory}, e.g. {"SFT": "logs/probes_sft", "DPO": "logs/probes_dpo"}.
        out: the PNG to write.
        sets / categories: which probe sets and categories (default: all, in logged order).
        per_token: plot probe_token/... (mean per-token log-prob) instead of probe/... (per sequence).
        delta: plot the change since the run's first probe, log p(t) - log p(0).
    """
    prefix = "probe_token/" if per_token else "probe/"
    data = {label: read_scalars(path, prefix) for label, path in runs.items()}
    panels: list[tuple[str, str]] = []
    for scalars in data.values():
        for tag in scalars:
            parts = tag.split("/")
            if len(parts) == 3 and (parts[1], parts[2]) not in panels:
                panels.append((parts[1], parts[2]))
    if sets is not None:
        panels = [p for p in panels if p[0] in sets]
        panels.sort(key=lambda p: sets.index(p[0]))
    if categories is not None:
        panels = [p for p in panels if p[1] in categories]
        panels.sort(key=lambda p: ((sets or []).index(p[0]) if sets else 0, categories.index(p[1])))
    if not panels:
        raise ValueError(f"no {prefix}<set>/<category> scalars in {', '.join(map(str, runs.values()))}")
    plt, fig, axes = _grid(len(panels), ncols)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (set_name, cat) in zip(axes, panels):
        tag = f"{prefix}{set_name}/{cat}"
        for i, (label, scalars) in enumerate(data.items()):
            if tag not in scalars:
                continue
            steps, values = zip(*scalars[tag])
            if delta:
                values = [v - values[0] for v in values]
            ax.plot(steps, values, label=label, color=colours[i % len(colours)], lw=1.6)
        if delta:
            ax.axhline(0.0, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{set_name} / {cat}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    what = "per-token" if per_token else "sequence"
    fig.supxlabel("optimizer step", fontsize=9)
    fig.supylabel(f"{'change in ' if delta else ''}{what} log p(response | prompt)", fontsize=9)
    return _save(fig, out, title)


def plot_sweep(rows: list[dict], metrics: list[str], out: "str | Path", x: str = "train_examples",
               group: str = "objective", ncols: int | None = None, title: str | None = None,
               panels: str | None = None) -> Path:
    """One panel per metric: the metric against `x` (log scale), one line per `group`, the mean over seeds
    with a band from the lowest to the highest seed. Accuracies are drawn on [0, 1] with chance (0.5) dotted.
    `panels` (e.g. "noise"): one panel per metric and value of that key instead, a column per value (a row of
    the grid per metric)."""
    levels = sorted({float(r.get(panels) or 0) for r in rows}) if panels else [None]
    cells = [(metric, level) for metric in metrics for level in levels]
    plt, fig, axes = _grid(len(cells), len(levels) if panels else ncols or (2 if len(metrics) in (2, 4) else 3))
    styles = ["-", "--", "-.", ":"]
    groups = list(dict.fromkeys(r[group] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, level) in zip(axes, cells):
        cell = rows if level is None else [r for r in rows if float(r.get(panels) or 0) == level]
        for i, g in enumerate(groups):
            by_x: dict[float, list[float]] = {}
            for r in cell:
                v = r.get(metric)
                if r[group] == g and v not in (None, "") and not (isinstance(v, float) and math.isnan(v)):
                    by_x.setdefault(float(r[x]), []).append(float(v))
            if not by_x:
                continue
            xs = sorted(by_x)
            mean = [sum(by_x[k]) / len(by_x[k]) for k in xs]
            c = colours[i % len(colours)]
            ax.plot(xs, mean, marker="os^D"[i % 4], ls=styles[i % len(styles)], label=f"{g}", color=c, lw=1.6)
            if any(len(by_x[k]) > 1 for k in xs):
                ax.fill_between(xs, [min(by_x[k]) for k in xs], [max(by_x[k]) for k in xs], color=c, alpha=0.15)
        if "accuracy" in metric or "p_match" in metric:
            ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        if "accuracy" in metric or "p_match" in metric or "/gen/" in metric:
            ax.set_ylim(-0.02, 1.02)
        ax.set_xscale("log")
        ticks = sorted({float(r[x]) for r in rows})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_title(metric if level is None else f"{metric}, {panels} {level:g}", fontsize=9)
        ax.set_xlabel(x.replace("_", " "), fontsize=8)
        ax.set_ylabel(metric.split("/", 1)[-1], fontsize=8)  # (the title names the set too)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, out, title)


def plot_steering(rows: list[dict], out: "str | Path", title: str | None = None) -> Path:
    """One panel per evaluation set: p_match against the steering multiplier, one line per layer; rows of
    steer.csv ({set, layer, multiplier, p_match}). Chance (0.5) dotted, multiplier 0 marked."""
    sets = list(dict.fromkeys(r["set"] for r in rows))
    plt, fig, axes = _grid(len(sets), min(len(sets), 3))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes, sets):
        layers = list(dict.fromkeys(r["layer"] for r in rows if r["set"] == name))
        for i, layer in enumerate(layers):
            points = sorted((float(r["multiplier"]), float(r["p_match"])) for r in rows
                            if r["set"] == name and r["layer"] == layer)
            ax.plot(*zip(*points), marker="o", ms=3, lw=1.6, color=colours[i % len(colours)], label=f"layer {layer}")
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.axvline(0.0, color="grey", lw=0.6, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("multiplier", fontsize=8)
        ax.set_ylabel("p_match", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, out, title)


def plot_steering_behaviours(rows: list[dict], best: dict[str, str], out: "str | Path", title: str | None = None,
                             sets: tuple[str, str] = ("lm", "human")) -> Path:
    """Two panels over several behaviours (rows of steer.csv with a `behaviour` column): p_match against the layer on
    the ID set (`sets[0]`) at the largest (solid) and smallest (dashed) multiplier, the unsteered model dotted; and
    p_match against the multiplier at each behaviour's `best` layer, ID solid, OOD (`sets[1]`) dashed."""
    plt, fig, axes = _grid(2, 2)
    fig.set_size_inches(11, 4.4)  # (room for a legend of behaviours)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    behaviours = list(dict.fromkeys(r["behaviour"] for r in rows))
    for i, b in enumerate(behaviours):
        colour = colours[i % len(colours)]
        mine = [r for r in rows if r["behaviour"] == b]
        ms = sorted({float(r["multiplier"]) for r in mine})
        for m, style in ((ms[-1], "-"), (ms[0], "--"), (0.0, ":")):
            points = sorted((int(r["layer"]), float(r["p_match"])) for r in mine
                            if r["set"] == sets[0] and float(r["multiplier"]) == m)
            if points:
                axes[0].plot(*zip(*points), ls=style, lw=1.4 if m else 0.9, color=colour,
                             label=b if m == ms[-1] else None)
        for s, style in zip(sets, ("-", "--")):
            points = sorted((float(r["multiplier"]), float(r["p_match"])) for r in mine
                            if r["set"] == s and r["layer"] == best[b])
            axes[1].plot(*zip(*points), ls=style, marker="o", ms=3, lw=1.4, color=colour,
                         label=f"{b} (layer {best[b]})" if s == sets[0] else None)
    axes[0].set_title(f"{sets[0]}: p_match by layer (solid: m = {ms[-1]:g}, dashed: m = {ms[0]:g}, dotted: 0)",
                      fontsize=9)
    axes[0].set_xlabel("layer", fontsize=8)
    axes[1].set_title(f"at the best layer ({sets[0]} solid, {sets[1]} dashed)", fontsize=9)
    axes[1].set_xlabel("multiplier", fontsize=8)
    for ax in axes:
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("p_match", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _save(fig, out, title)


def _save(fig, out: "str | Path", title: str | None) -> Path:
    """Title, lay out, write the PNG (creating its folder) and free the figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
