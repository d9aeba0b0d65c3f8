"""The rules of `fit --ckpt_path ...`: which checkpoint a run continues, and which settings it may change.

A checkpoint belongs to one run. The experiment's folder `logs/<experiment>/checkpoints/` holds the checkpoints of
one run (continued across resumes and requeues): a *fresh* `fit` into a folder that already holds a complete
checkpoint is refused (`occupied`), so a second run never overwrites the first run's `last.ckpt` or leaves its
older checkpoints beside its own. Resume it with `--ckpt_path last`, or give the new run another experiment name.

A resumed run continues its checkpoint's run exactly, so every setting that changes what the remaining steps
compute must be the checkpoint's:
- the objective's settings (its hyperparameters, stored by Lightning; `changed_settings`), apart from the
  compute-only ones (`Objective.compute_only_settings`: how the numbers are computed, not the numbers); a setting
  added after the checkpoint was written reads as its old meaning (`Objective.added_settings`), and one since
  removed passes where the checkpoint holds the only value it could have had (`Objective.removed_settings`);
- the run's settings (`run_settings`, stored by RunCheckpoint under RUN_SETTINGS): the data module's options
  (sources, limits, splits, tokenization, batch size, seed, order), the seed, and the trainer options that change
  a step (accumulation, clipping, precision, the train-batch limit); max_steps / max_epochs only where the
  learning-rate schedule depends on them (`OptimSpec.uses_total_steps`). Evaluation-only options (val/test/predict
  sets, eval batch size, workers) and the number of devices pass; so do batch size, accumulation and devices
  changed together when the global batch they make is kept.
`--checkpoint.force_resume true` resumes anyway, with the changes listed.
"""

from __future__ import annotations

import dataclasses
import math
import os

RUN_SETTINGS = "lit_align_run_settings"
"""The checkpoint key under which RunCheckpoint stores `run_settings`."""

COMPUTE_ONLY = frozenset({"gradient_checkpointing", "lm_head", "logits_chunk", "attn_implementation", "implementation"})
"""The model settings of every objective that change how the numbers are computed, not the numbers (an objective
adds its own: `Objective.compute_only_settings`)."""

EVAL_ONLY_DATA = {"val", "test", "predict", "eval_batch_size", "num_workers"}
"""Data options that do not touch training (evaluation sets, loading): a resume may change them silently."""
COMPUTE_ONLY_DATA = {"pad_to_multiple_of"}
"""Data options that change how a batch is laid out, not its numbers: applied and said."""
TRAINER_SETTINGS = ("accumulate_grad_batches", "max_steps", "max_epochs", "limit_train_batches", "gradient_clip_val",
                    "gradient_clip_algorithm", "precision")
"""The trainer options that change what a resumed step computes (read from the Trainer, so defaults are explicit)."""
LENGTH_SETTINGS = {"trainer.max_steps", "trainer.max_epochs"}
"""Refused only when the learning-rate schedule depends on the run's length."""
BATCH_SETTINGS = ("data.init_args.batch_size", "trainer.accumulate_grad_batches", "trainer.world_size")
"""Their product is the global batch: changing them together while keeping it passes."""

FORCE = "--checkpoint.force_resume true"
_MISSING = object()


def flat(value, prefix: str = "") -> dict:
    """A nested config (dicts, dataclasses) as {'a.b.c': leaf}; tuples as lists (YAML round trips)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k != "_instantiator":
                out.update(flat(v, f"{prefix}{'class_path' if k == '_class_path' else k}."))
        return out
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def checkpoint_meta(path: str) -> dict | None:
    """The checkpoint `path` (memory-mapped: its tensors are not read), or None for a layout without Lightning's
    keys (DeepSpeed): then Lightning decides alone."""
    import torch

    try:
        meta = os.path.join(path, "meta.pt") if os.path.isdir(path) else path
        ckpt = torch.load(meta, map_location="cpu", weights_only=False, mmap=True)
        int(ckpt["global_step"]), int(ckpt["epoch"])
    except Exception:
        return None
    return ckpt


def _said(key: str, old, new, missing) -> str:
    return (f"{key}: {'(absent)' if old is missing else repr(old)} in the checkpoint, "
            f"{'(absent)' if new is missing else repr(new)} now")


def changed_settings(saved: dict, now: dict, compute_only=COMPUTE_ONLY, added: dict | None = None,
                     removed: dict | None = None) -> tuple[list[str], list[str]]:
    """The model settings (hyperparameters) that differ between a checkpoint and this run, as `key: old -> new`:
    (compute-only ones, the others). The objective declares the rules (`Objective.compute_only_settings`,
    `added_settings`, `removed_settings`): `compute_only`, the names (at any depth) a resume may change; `added`,
    settings added after checkpoints were written -> the value their absence meant (a checkpoint without the key
    resumes under it); `removed`, settings the objective no longer has -> the only value they could have had (a
    checkpoint holding it resumes)."""
    added, removed = added or {}, removed or {}
    old, new = flat(saved), flat(now)
    if old.get("class_path") != new.get("class_path"):  # another objective: its settings are not comparable
        return [], [f"model.class_path (the objective): {old.get('class_path')!r} in the checkpoint, "
                    f"{new.get('class_path')!r} now"]
    missing = _MISSING
    applied, refused = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a is missing and key in added:
            a = added[key]
        if b is missing and key in removed and a == removed[key]:
            continue
        if a != b:
            line = _said(f"model.{'' if key == 'class_path' else 'init_args.'}{key}", a, b, missing)
            (applied if key.rsplit(".", 1)[-1] in compute_only else refused).append(line)
    return applied, refused


def run_settings(config: dict, trainer) -> dict:
    """What this run's steps depend on besides the objective: the data module's resolved options (`config` is the
    subcommand's config as plain data), the seed, and the trainer's settings (`TRAINER_SETTINGS`, world size)."""
    return {"data": config.get("data"), "seed_everything": config.get("seed_everything"),
            "trainer": {**{k: _plain(getattr(trainer, k, None)) for k in TRAINER_SETTINGS},
                        "world_size": int(trainer.world_size)}}


def _plain(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def changed_run_settings(saved: dict, now: dict, schedule_uses_total: bool) -> tuple[list[str], list[str]]:
    """The run settings that differ between a checkpoint (`saved`) and this run (`now`), as lines: (those that
    pass, said; those that change what the resumed steps compute). A setting only one side records (added in
    another version of lit_align) is not compared."""
    old, new = flat(saved), flat(now)
    for key in set(old) ^ set(new):  # a source given as a path one time, as {path, limit, ...} the other time
        option = ".".join(key.split(".")[:3])
        if any(k.startswith(option + ".") or k == option for k in (new if key in old else old)):
            old.setdefault(key, None), new.setdefault(key, None)
    applied, refused = [], []
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if a == b or key in BATCH_SETTINGS:
            continue
        option = key.removeprefix("data.init_args.").split(".")[0] if key.startswith("data.init_args.") else None
        if option in EVAL_ONLY_DATA:
            continue
        line = _said(key, a, b, _MISSING)
        if key in LENGTH_SETTINGS and not schedule_uses_total:
            continue  # training further under a constant schedule: the steps so far are unchanged
        if option in COMPUTE_ONLY_DATA:
            applied.append(line)
        elif key in LENGTH_SETTINGS:
            refused.append(f"{line} (the learning-rate schedule runs to the last step)")
        else:
            refused.append(line)
    if all(k in old and k in new for k in BATCH_SETTINGS):
        parts_old, parts_new = [old[k] for k in BATCH_SETTINGS], [new[k] for k in BATCH_SETTINGS]
        if parts_old != parts_new:
            names = " x ".join(k.rsplit(".", 1)[-1] for k in BATCH_SETTINGS)
            line = (f"the global batch ({names}): {math.prod(parts_old)} ({' x '.join(map(str, parts_old))}) in the "
                    f"checkpoint, {math.prod(parts_new)} ({' x '.join(map(str, parts_new))}) now")
            (applied if math.prod(parts_old) == math.prod(parts_new) else refused).append(line)
    return applied, refused


def finished_run(ckpt: dict, path: str, trainer, given: str = "last", schedule_uses_total: bool = False) -> str | None:
    """Why resuming the checkpoint `ckpt` (from `path`) with `trainer`'s limits would train nothing (None: it
    would train)."""
    step, epoch = int(ckpt["global_step"]), int(ckpt["epoch"])
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    if max_steps is not None and max_steps >= 0 and step >= max_steps:
        done, further = f"step {step}; trainer.max_steps {max_steps}", f"--trainer.max_steps {max(2 * step, step + 1)}"
    elif max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs and (max_steps is None or max_steps < 0):
        done, further = f"epoch {epoch}; trainer.max_epochs {max_epochs}", f"--trainer.max_epochs {max(2 * epoch, 2)}"
    else:
        return None
    new_run = "give it another experiment name (--trainer.logger.init_args.name NAME)"
    if schedule_uses_total:  # a longer run would have had another learning rate at every step so far
        further = (f"its learning-rate schedule ran to this last step, so it is not trained further as the same run: "
                   f"{new_run}, starting from its exported model (--model.init_args.policy.name <its version "
                   f"dir>/hf_model), or force it ({FORCE} {further})")
    else:
        further = f"raise the limit and resume: --ckpt_path {given} {further}"
    return (f"the run in {path} is finished ({done}): nothing to train, and nothing is rewritten (checkpoint, "
            f"exported model). To train it further, {further}. To start a new run, {new_run}.")


def occupied(dirpath: str, newest: str | None, step: int | None, ckpt_path: str | None = None) -> str:
    """Why a fit that does not resume from `dirpath`'s checkpoints is refused there (`newest`: its newest complete
    checkpoint, at `step`)."""
    start = (f"--ckpt_path {ckpt_path} starts from another folder's checkpoint, but " if ckpt_path else "")
    at = f", step {step}" if step is not None else ""
    return (f"{start}{dirpath} holds the checkpoints of an earlier run of this experiment (newest: "
            f"{os.path.basename(newest or '')}{at}), which a new run would overwrite. Resume that run with --ckpt_path "
            f"last, start this one under another name (--trainer.logger.init_args.name NAME), or delete {dirpath} to "
            "start the experiment anew.")
