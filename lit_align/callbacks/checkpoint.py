"""Checkpoints in one place per experiment, written safely, with what an exact resume needs.

Where. Lightning's default puts checkpoints under the logger's versioned directory (logs/<exp>/version_N/),
so a new run (version N+1) cannot find the last checkpoint of the run it should resume. Here the default
directory is logs/<exp>/checkpoints/, shared by the versions of one run (its resumes); a fresh fit into a folder
holding another run's checkpoints is refused by the CLI (lit_align/resume.py). Lightning writes last.ckpt
after validation or at an epoch's end; a run that stops on max_steps mid-epoch would leave its final steps
unsaved, so last.ckpt is also written when training ends.

Safely. A checkpoint is written under a hidden temporary name in the same directory (`.last.ckpt.<run>.partial`,
named after the run, a file, or a directory for sharded FSDP2 / DeepSpeed checkpoints), flushed to disk (fsync), and only then
renamed over its final name: a process killed during a save leaves the previous checkpoint intact (and a
partial file, removed by the next run). Lightning's own "atomic" save writes to the system temp directory
and moves the file (a copy, not a rename, when /tmp is another file system, as on most clusters): a file
checkpoint is instead written by torch.save straight into the `.partial` file (PartialFileCheckpointIO).
A save that fails (a full disk, no permission) removes its partial file and stops the run with one sentence;
the previous checkpoint is untouched.
`--ckpt_path last` takes the newest *complete* last*.ckpt: an incomplete file (a truncated copy) or a
corrupt one (a stored checksum that does not match) is skipped with a warning, and where no last*.ckpt is complete
the newest complete checkpoint of any name is taken (said); an explicit `--ckpt_path FILE`
that is missing, incomplete or corrupt is refused in one sentence (`checkpoint_problem`). A checkpoint whose weights hold NaN or inf is never written: the run stops with
an error instead, and the last good checkpoint stays the newest.
There is one last.ckpt per experiment, replaced atomically (never Lightning's last-v1.ckpt), and one run at a
time per experiment: `fit` holds a lock in the checkpoint directory (lock.py); a second run stops with an error
naming the holder.

Exactly. Lightning restores weights, optimizer, scheduler, loop counters and the data module (whose
sampler position is in its state). The random number generators (torch, CUDA, numpy, Python; one state
per rank) are saved here too and restored at the first training batch after a resume. Validation runs
with the training RNG state saved and restored around it, so evaluating (or resuming, which skips the
evaluation already done) never shifts the randomness of training (dropout).
"""

from __future__ import annotations

import os
import secrets
import shutil
import zipfile
import zlib
from weakref import proxy

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_align.callbacks.lock import ExperimentLock
from lit_align.callbacks.stops import Interrupted, Requeued
from lit_align.errors import LitAlignError, write_error
from lit_align.resume import RUN_SETTINGS

RNG_KEY = "lit_align_rng"
PARTIAL, OLD = ".partial", ".old"


def partial_path(path: str, token: str | None = None) -> str:
    """Where `path` is written before it is complete: a hidden sibling (same file system, so a rename), named
    after the run (`token`: RunCheckpoint's, one per run, the same on every rank)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{f'.{token}' if token else ''}{PARTIAL}")


def old_path(path: str) -> str:
    """Where a directory checkpoint is moved aside while its successor is renamed into place."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{OLD}")


def is_complete(path: str) -> bool:
    """True if `path` is a whole checkpoint: a torch.save zip archive whose central directory (written last)
    is there, or a checkpoint directory whose index files are there."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "meta.pt")):  # FSDP2 / ModelParallelStrategy (torch DCP)
            return os.path.isfile(os.path.join(path, ".metadata")) and zipfile.is_zipfile(os.path.join(path, "meta.pt"))
        if os.path.exists(os.path.join(path, "checkpoint")):  # DeepSpeed
            return os.path.isfile(os.path.join(path, "latest"))
        return any(os.scandir(path))
    return os.path.isfile(path) and zipfile.is_zipfile(path)


def checkpoint_problem(path: str) -> str | None:
    """What is wrong with the checkpoint `path`, in a few words (None: it looks whole). A file is checked
    against the CRC-32 checksums torch.save's zip archive stores for each record, which catches flipped bytes
    that the completeness check (the central directory is there) does not."""
    if not os.path.exists(path):
        return "file not found"
    if not is_complete(path):
        return ("an incomplete checkpoint directory (partly written)" if os.path.isdir(path) else
                "not a complete checkpoint (truncated, or not a file that torch.save / Lightning wrote)")
    if os.path.isdir(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError) as e:
        return f"a corrupt checkpoint ({type(e).__name__}: {e})"
    if bad is not None:
        return f"a corrupt checkpoint (the bytes of its record '{bad}' do not match their stored checksum)"
    return None


class PartialFileCheckpointIO(TorchCheckpointIO):
    """torch.save straight into the target file (RunCheckpoint's `.partial`), fsync'ed: no copy through the
    system temp directory or a second copy in memory, as Lightning's _atomic_save makes. Remote (fsspec URL)
    paths go through Lightning's own save."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
        with open(path, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for f in files:
                _fsync(os.path.join(root, f))
            _fsync(root)
    else:
        _fsync(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def commit(partial: str, final: str) -> None:
    """Make the complete checkpoint `partial` the checkpoint `final`, atomically for files. A directory cannot
    atomically replace another: the old one is first moved aside to `old_path(final)`, which stays a
    resume candidate until the new one is in place."""
    _fsync_tree(partial)
    if os.path.isdir(final) and not os.path.islink(final) or os.path.isdir(partial):
        aside = old_path(final)
        _remove(aside)
        if os.path.lexists(final):
            os.replace(final, aside)
        os.replace(partial, final)
        _remove(aside)
    else:
        os.replace(partial, final)
    _fsync(os.path.dirname(final) or ".")


def rng_states(states: dict | None = None) -> dict:
    """This process's random states (torch, CUDA, numpy, Python), or `states`, in types that
    `torch.load(weights_only=True)` accepts (numpy's key array as a list)."""
    states = dict(states or _collect_rng_states())
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    return states


def set_rng_states(states: dict) -> None:
    states = dict(states)
    if "numpy" in states:
        import numpy as np

        name, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    if not torch.cuda.is_available():
        states.pop("torch.cuda", None)
    _set_rng_states(states)


def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters (this rank's shards) holding NaN or inf."""
    bad = []
    for name, p in module.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2: a DTensor, check the local shard
        if local.numel() and not torch.isfinite(local.detach()).all():
            bad.append(name)
    return bad


class RunCheckpoint(ModelCheckpoint):
    def __init__(self, save_last: bool = True, every_n_train_steps: int | None = None, force_resume: bool = False,
                 **kwargs):
        """
        Args:
            force_resume: resume (`--ckpt_path`) even where this run's data, trainer or model settings differ from
                the checkpoint's (lit_align/resume.py: refused otherwise); the changes are listed, and the resumed
                steps then differ from an uninterrupted run.
        """
        super().__init__(save_last=save_last, every_n_train_steps=every_n_train_steps, **kwargs)
        self.force_resume = force_resume
        self.run_settings: dict | None = None  # resume.run_settings, set by the CLI; stored in every checkpoint
        self._rng_train: dict | None = None
        self._rng_to_restore: dict | None = None
        self._lock: ExperimentLock | None = None
        self._token: str | None = None
        self._last_epoch_saved: int | None = None

    def _default_dirpath(self, trainer) -> None:
        if self.dirpath is None and trainer.loggers and trainer.loggers[0].save_dir is not None:
            logger = trainer.loggers[0]
            self.dirpath = os.path.join(logger.save_dir, str(logger.name), "checkpoints")

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = PartialFileCheckpointIO()
        if stage != "fit" or not self.dirpath:
            return
        self._lock_experiment(trainer)
        self._token = trainer.strategy.broadcast(f"{os.getpid()}-{secrets.token_hex(3)}", src=0)
        if trainer.is_global_zero and os.path.isdir(self.dirpath):
            for entry in os.scandir(self.dirpath):  # leftovers of a save that was killed
                if entry.name.startswith(".") and entry.name.endswith(PARTIAL):
                    rank_zero_info(f"removing an incomplete checkpoint left by an interrupted save: {entry.path}")
                    _remove(entry.path)
        trainer.strategy.barrier("RunCheckpoint.setup")

    def _lock_experiment(self, trainer) -> None:
        """One run at a time in this checkpoint directory (lock.py): rank 0 takes the lock, every rank stops if
        another run holds it."""
        refused = None
        if trainer.is_global_zero and "://" not in self.dirpath:
            self._lock = ExperimentLock(self.dirpath)
            try:
                self._lock.acquire()
            except LitAlignError as e:
                refused, self._lock = str(e), None
        refused = trainer.strategy.broadcast(refused, src=0)
        if refused:
            raise LitAlignError(refused)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._release()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lit_align.callbacks.collective_timeout import collective_timeout

        try:
            # Interrupted / Requeued wrote last.ckpt at a step's end; after a collective timeout a save would wait
            # in a collective again
            if not isinstance(exception, (Interrupted, Requeued)) and collective_timeout(exception) is None:
                super().on_exception(trainer, pl_module, exception)
        finally:
            self._release()

    # -- which checkpoint `--ckpt_path last` resumes ------------------------------------------------
    def _find_last_checkpoints(self, trainer) -> set[str]:
        """The newest complete last*.ckpt; when every one is incomplete or corrupt, the newest complete checkpoint
        of any name in the folder (said), rather than starting from scratch."""
        self._default_dirpath(trainer)
        found = set(super()._find_last_checkpoints(trainer))
        if self.dirpath and os.path.isdir(self.dirpath):  # a directory commit interrupted between its renames
            for path in list(found) + [os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)]:
                if not os.path.exists(path) and os.path.exists(old_path(path)):
                    found.discard(path)
                    found.add(old_path(path))
        problems = {p: checkpoint_problem(p) for p in found}
        for p in sorted(p for p, problem in problems.items() if problem):
            rank_zero_warn(f"ignoring the checkpoint {p}: {problems[p]}")
        good = {p for p, problem in problems.items() if not problem}
        if problems and not good:
            others = self.complete_checkpoints()
            if others:
                rank_zero_warn(f"no complete last checkpoint: resuming from the newest complete checkpoint in "
                               f"{self.dirpath}, {os.path.basename(others[-1])}")
                good = {others[-1]}
        return good

    def complete_checkpoints(self) -> list[str]:
        """The complete checkpoints in this callback's folder (files and checkpoint directories, not the hidden
        partial or set-aside ones), oldest first."""
        if not self.dirpath or "://" in str(self.dirpath) or not os.path.isdir(self.dirpath):
            return []
        paths = [e.path for e in os.scandir(self.dirpath) if not e.name.startswith(".")
                 and e.name.endswith(self.FILE_EXTENSION)]
        return sorted((p for p in paths if checkpoint_problem(p) is None), key=os.path.getmtime)

    # -- writing ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, trainer, filepath: str) -> None:
        self.refuse_nonfinite(trainer, filepath)
        partial = partial_path(filepath, self._token)
        error = None
        try:  # Trainer.save_checkpoint without its closing barrier: a rank whose write failed would never reach it
            with trainer.profiler.profile("save_checkpoint"):
                checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
                trainer.strategy.save_checkpoint(checkpoint, partial)  # rank 0 (sharded: every rank)
        except Exception as e:  # a full disk, no permission, ... (torch.save: a RuntimeError raised over the OSError)
            error = write_error(e) or (e if isinstance(e, OSError) else None)
            if error is None:
                raise
        self._stop_if_any_failed(trainer, filepath, partial, error)
        try:
            if trainer.is_global_zero:
                commit(partial, filepath)
        except OSError as e:
            error = e
        self._stop_if_any_failed(trainer, filepath, partial, error)
        self._last_global_step_saved = trainer.global_step
        self._last_epoch_saved = trainer.current_epoch
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _stop_if_any_failed(self, trainer, filepath: str, partial: str, error: OSError | None) -> None:
        """Every rank learns which ranks failed to save (this all-reduce is also the barrier), and all of them stop
        with the same sentence, instead of the others waiting for a failed rank in the next collective."""
        failed = torch.zeros(trainer.world_size, device=trainer.strategy.root_device)
        failed[trainer.global_rank] = float(error is not None)
        if trainer.world_size > 1:
            failed = trainer.strategy.reduce(failed, reduce_op="sum")
        if not failed.any():
            return
        src = int(failed.nonzero()[0])
        message = self._save_failed(trainer, filepath, partial, error) if error is not None else None
        message = trainer.strategy.broadcast(message, src=src)
        raise LitAlignError(message if src == 0 else f"rank {src}: {message}")

    def _save_failed(self, trainer, filepath: str, partial: str, e: OSError) -> str:
        """What went wrong with a save (on this rank), with what is left on disk; the partial file removed."""
        _remove(partial)
        folder = os.path.dirname(filepath) or "."
        earlier = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")
                          and e.name.endswith(self.FILE_EXTENSION)), key=lambda e: e.stat().st_mtime) \
            if os.path.isdir(folder) else []
        previous = (f"the checkpoints already there are untouched (newest: {earlier[-1].name})" if earlier
                    else "no checkpoint was written before")
        return (f"could not write the checkpoint {filepath} at step {trainer.global_step}: "
                f"{e.strerror or e} ({type(e).__name__}{f', errno {e.errno}' if e.errno else ''}); "
                f"{previous}. Free space or fix the permissions of {os.path.dirname(filepath)} "
                "(or set checkpoint.dirpath), then resume with --ckpt_path last.")

    @staticmethod
    def refuse_nonfinite(trainer, filepath: str) -> None:
        """Stop (on every rank) rather than write a checkpoint with NaN or inf weights."""
        bad = nonfinite_parameters(trainer.lightning_module)
        flag = torch.tensor(float(len(bad)), device=trainer.strategy.root_device)
        if trainer.strategy.reduce(flag, reduce_op="sum").item() > 0:
            raise LitAlignError(
                f"the weights hold NaN or inf at step {trainer.global_step} ({', '.join(bad[:3]) or 'another rank'}"
                f"{' ...' if len(bad) > 3 else ''}); refusing to write {filepath}. The last checkpoint written "
                "stays the newest: resume from it with a lower learning rate, gradient clipping "
                "(trainer.gradient_clip_val) or `nonfinite.action: skip`.")

    def save_last_now(self, trainer) -> str:
        """Write last.ckpt now (every rank must call it), e.g. before a requeue. Returns its path."""
        self._default_dirpath(trainer)
        filepath = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        self.last_model_path = filepath
        self._save_checkpoint(trainer, filepath)
        return filepath

    def _save_last_checkpoint(self, trainer, monitor_candidates: dict) -> None:
        """One last.ckpt per experiment, replaced atomically: never Lightning's last-v1.ckpt (its version counter
        picks a new name when last.ckpt exists and is not this run's, and `--ckpt_path last` then takes either)."""
        counter, self._enable_version_counter = self._enable_version_counter, False
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._enable_version_counter = counter

    def on_train_end(self, trainer, pl_module) -> None:
        # also when the last step ended an epoch whose last validation saved it (a checkpoint that still says
        # "mid-epoch"): the final last.ckpt must say the epoch is done, or resuming a run finished on max_epochs
        # would run the end of fit (and its export) again
        epoch_done = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self.save_last and not trainer.interrupted and (
                self._last_global_step_saved != trainer.global_step
                or epoch_done and self._last_epoch_saved != trainer.current_epoch):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # -- random number generators ---------------------------------------------------------------------
    # The evaluation loop consumes the global RNG before any validation hook runs (a DataLoader iterator without
    # its own generator draws its seed from it), so the training state is taken at the end of every training
    # batch (and before the sanity check), and put back when validation ends.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._rng_train = _collect_rng_states()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._rng_train = _collect_rng_states()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and self._rng_train is not None:
            _set_rng_states(self._rng_train)
        super().on_validation_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        in_eval = trainer.validating or trainer.sanity_checking
        state = rng_states(self._rng_train if in_eval and self._rng_train is not None else None)
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint[RNG_KEY] = states
        if self.run_settings is not None:
            checkpoint[RUN_SETTINGS] = self.run_settings

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get(RNG_KEY)
        if not states:
            return
        if len(states) != trainer.world_size:
            rank_zero_warn(f"the checkpoint holds the random states of {len(states)} processes, this run has "
                           f"{trainer.world_size}: random numbers (dropout) will differ from an uninterrupted run")
        self._rng_to_restore = states[trainer.global_rank % len(states)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._rng_to_restore is not None:  # the first batch after a resume
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
