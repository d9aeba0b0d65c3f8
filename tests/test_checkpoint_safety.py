"""Checkpoint safety: a process killed while writing a checkpoint leaves the last good one readable (checkpoints
are written under a hidden partial name, flushed, then renamed), and `--ckpt_path last` resumes the newest
*complete* checkpoint (a truncated newer file is skipped; a directory checkpoint caught between its two renames
is still found)."""

import io
import json
import os
import signal
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli
from lightning.pytorch import Callback, Trainer
from test_resume import ONE_THREAD, one_thread, run_in_process, scalars  # noqa: F401 (fixture)

from lit_align.callbacks import RunCheckpoint
from lit_align.callbacks.checkpoint import commit, is_complete, old_path, partial_path
from lit_align.callbacks.lock import ExperimentLock
from lit_align.data import AlignDataModule
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import SFT, OptimSpec


class KillDuringSave(Callback):
    """Test helper, loaded by the CLI subprocess from tests/: while the checkpoint of optimizer step `step` is
    saved, the write of last.ckpt's bytes stops half-way and the process is SIGKILLed (power cut, OOM kill)."""

    def __init__(self, step: int):
        self.step = step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step != self.step:
            return
        import lit_align.callbacks.checkpoint as checkpoint_module  # PartialFileCheckpointIO: torch.save(obj, f)

        original = torch.save

        def dying_save(obj, f, *args, **kwargs):
            if "last" not in os.path.basename(str(getattr(f, "name", f))):
                return original(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            original(obj, buffer)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])  # whatever file the checkpoint is written to, half of it
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint_module.torch.save = dying_save


RUN = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--model.init_args.policy.name", "builtin:tiny",
       "--data.init_args.train.limit", "48", "--data.init_args.val.val.limit", "8", "--data.init_args.batch_size", "4",
       "--trainer.max_steps", "6", "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1",
       "--trainer.logger.init_args.name", "safety", "--checkpoint.every_n_train_steps", "2",
       "--trainer.enable_model_summary", "false", "--export.enabled", "false"]


def test_kill_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, one_thread):  # noqa: F811
    killed = run_cli([*RUN, "--trainer.callbacks+=test_checkpoint_safety.KillDuringSave",
                      "--trainer.callbacks.step", "4"], cwd=tmp_path, env=ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = tmp_path / "logs" / "safety" / "checkpoints"
    [partial] = ckpts.glob(".last.ckpt.*.partial")  # named after the run
    assert not zipfile.is_zipfile(partial)                       # it died writing step 4's last.ckpt ...
    last = torch.load(ckpts / "last.ckpt", weights_only=False)   # ... and step 2's is intact
    assert last["global_step"] == 2

    run_in_process([*RUN, "--ckpt_path", "last"], tmp_path, monkeypatch)
    assert not partial.exists()  # the leftover of the killed save is cleaned up
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 6
    assert sorted(scalars(tmp_path / "logs" / "safety" / "version_1", "train/loss")) == [2, 3, 4, 5]


def test_one_run_per_experiment_and_one_last_checkpoint(tmp_path, monkeypatch, capsys, one_thread):  # noqa: F811
    """A second run of an experiment whose lock is held stops in one sentence naming the holder (exit 2) and
    touches nothing; a lock left by a process that is gone is taken over with a warning; a new run in an
    experiment that holds another run's checkpoints is refused; the resumed run replaces its last.ckpt (no
    last-v1.ckpt)."""
    from lit_align.cli import main

    ckpts = tmp_path / "logs" / "safety" / "checkpoints"
    short = [*RUN, "--trainer.max_steps", "2", "--model.init_args.optim.schedule", "constant"]
    ckpts.mkdir(parents=True)
    (ckpts / ".last.ckpt.partial").write_bytes(b"the holder's save in progress")
    monkeypatch.chdir(tmp_path)
    with ExperimentLock(str(ckpts)), pytest.raises(SystemExit) as refused:
        main(short)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "is in use by another run" in err and f"pid {os.getpid()} on host {socket.gethostname()}" in err
    assert "started " in err and "Traceback" not in err
    assert sorted(p.name for p in ckpts.iterdir()) == [".last.ckpt.partial", ".lock"]  # nothing touched

    gone = subprocess.Popen(["true"])
    gone.wait()
    (ckpts / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "earlier",
                                             "command": "lit_align fit"}))
    with pytest.warns(UserWarning, match=f"pid {gone.pid} .* no longer running"):
        run_in_process(short, tmp_path, monkeypatch)
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # a new run, same experiment: it would overwrite the first one's
        main([*short, "--seed_everything", "1"])
    assert refused.value.code == 2 and "holds the checkpoints of an earlier run" in capsys.readouterr().err
    run_in_process([*short, "--trainer.max_steps", "4", "--ckpt_path", "last"], tmp_path, monkeypatch)  # continued
    assert sorted(p.name for p in ckpts.glob("last*")) == ["last.ckpt"]  # one last.ckpt, replaced
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 4
    assert (ckpts / ".lock").read_text() == ""  # released
    assert not list(ckpts.glob("*.partial"))


def test_resume_skips_an_incomplete_newer_checkpoint(tmp_path, one_thread):  # noqa: F811
    def fit(max_steps, ckpt_path=None):
        model = SFT(policy=ModelSpec(name="builtin:tiny"), optim=OptimSpec(lr=1e-2))
        data = AlignDataModule(train={"path": "builtin:sft", "limit": 32}, batch_size=4, max_length=64)
        data.connect(model.tokenizer, model.layout)
        trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False,
                          callbacks=[RunCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1)])
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=False)  # hparams hold dataclasses
        return trainer

    fit(2)
    good = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last-v1.ckpt").write_bytes(good[: len(good) // 3])  # newer, truncated (e.g. a copy cut short)
    os.utime(tmp_path / "last-v1.ckpt", (os.path.getmtime(tmp_path / "last.ckpt") + 60,) * 2)
    assert RunCheckpoint(dirpath=str(tmp_path))._find_last_checkpoints(None) == {str(tmp_path / "last.ckpt")}
    trainer = fit(3, ckpt_path="last")
    assert trainer.ckpt_path == str(tmp_path / "last.ckpt") and trainer.global_step == 3


def _directory_checkpoint(path: Path, tag: str) -> None:
    path.mkdir()
    torch.save({"tag": tag}, path / "meta.pt")
    (path / ".metadata").write_bytes(b"index")
    (path / "__0_0.distcp").write_bytes(tag.encode())


def test_directory_checkpoints_commit_and_recover(tmp_path):
    final = tmp_path / "last.ckpt"
    _directory_checkpoint(final, "old")
    part = Path(partial_path(str(final)))
    _directory_checkpoint(part, "new")
    (part / ".metadata").unlink()
    assert not is_complete(str(part))  # the index is written last: without it the directory is partial
    (part / ".metadata").write_bytes(b"index")
    commit(str(part), str(final))
    assert not part.exists() and not Path(old_path(str(final))).exists()
    assert torch.load(final / "meta.pt")["tag"] == "new"

    # killed between the two renames of the next commit: the previous checkpoint is still found
    os.replace(final, old_path(str(final)))
    found = RunCheckpoint(dirpath=str(tmp_path))._find_last_checkpoints(None)
    assert found == {old_path(str(final))}
    # files: a truncated torch.save archive is incomplete, a whole one complete
    torch.save({"x": torch.ones(3)}, tmp_path / "f.ckpt")
    data = (tmp_path / "f.ckpt").read_bytes()
    (tmp_path / "g.ckpt").write_bytes(data[:-30])
    assert is_complete(str(tmp_path / "f.ckpt")) and not is_complete(str(tmp_path / "g.ckpt"))


@pytest.fixture
def small_disk(tmp_path):
    """mount(path, options): a tmpfs at `path` (e.g. "size=2M", "ro"), unmounted after the test; the test is skipped
    where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    mounted = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_a_full_disk_during_a_save_is_one_sentence_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys,
                                                                             small_disk, one_thread):  # noqa: F811
    """A checkpoint folder on a 2 MB disk (a checkpoint of builtin:tiny is 1.5 MB): the second save fills it. The run
    stops with one sentence (exit 2, no traceback), the partial file is removed, the first checkpoint stays."""
    from lit_align.cli import main

    disk = small_disk(tmp_path / "disk", "size=2M")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main([*RUN, "--checkpoint.dirpath", str(disk)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    [sentence] = [line for line in err.splitlines() if line.startswith("lit_align: error:")]
    assert f"could not write the checkpoint {disk}" in sentence and "No space left on device" in sentence, sentence
    assert "then resume with --ckpt_path last" in sentence
    names = sorted(p.name for p in disk.iterdir())
    assert not [n for n in names if n.endswith(".partial")], names
    [kept] = [n for n in names if n.endswith(".ckpt")]
    assert is_complete(str(disk / kept))


def test_a_read_only_logs_folder_is_one_sentence(tmp_path, monkeypatch, capsys, small_disk, one_thread):  # noqa: F811
    from lit_align.cli import main

    small_disk(tmp_path / "logs", "ro,size=1M")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(RUN)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    [sentence] = [line for line in err.splitlines() if line.startswith("lit_align: error:")]
    assert f"could not write {tmp_path / 'logs'}" in sentence and "Read-only file system (errno 30)" in sentence, \
        sentence
    assert "--trainer.logger.init_args.save_dir DIR" in sentence
