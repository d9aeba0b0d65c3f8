"""Exact resume: a run killed in the middle of an epoch and resumed with `--ckpt_path last` gives the same
per-step losses and final weights as a run that was never interrupted (fp32, CPU). Data order (the sampler's
epoch and position), RNG (LoRA dropout), optimizer, scheduler and loop counters all come back.
The sampler's own contract (DistributedSampler semantics, resuming inside an epoch) is tested directly."""

import glob
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli
from lightning.pytorch import Callback
from torch.utils.data import DistributedSampler

from lit_align.data.samplers import ResumableSampler

TESTS = Path(__file__).resolve().parent
# One thread per process: with 2 cores shared by pytest workers (and DDP ranks), more threads oversubscribe
# them (a tiny step is then 10-20x slower); it also makes the in-process and subprocess runs' float
# arithmetic the same. PYTHONPATH: the test helpers, then this checkout (not another one installed in the venv:
# a git worktree beside an editable install ran the installed lit_align in these subprocesses).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the sampler -----------------------------------------------------------------------------------------------


def _batches(sampler, batch_size):
    idx = list(sampler)
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


@pytest.mark.parametrize("n", [32, 37])
def test_sampler_has_distributed_sampler_semantics(n):
    data = list(range(n))
    for epoch in (0, 3):
        ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=5) for r in range(2)]
        torch_ranks = [DistributedSampler(data, num_replicas=2, rank=r, seed=5) for r in range(2)]
        for s in ranks + torch_ranks:
            s.set_epoch(epoch)
        assert [list(s) for s in ranks] == [list(s) for s in torch_ranks]  # the same shards as torch's
        assert len(ranks[0]) == len(torch_ranks[0])
        if n % 2 == 0:
            assert not set(ranks[0]) & set(ranks[1])  # disjoint
        # the union of the ranks' k-th batches (B=4) is the k-th batch (B=8) of one process
        single = ResumableSampler(data, seed=5)
        single.set_epoch(epoch)
        for k, big in enumerate(_batches(single, 8)[: n // 8]):
            assert sorted(_batches(ranks[0], 4)[k] + _batches(ranks[1], 4)[k]) == sorted(big)
    one = ResumableSampler(data, seed=5)
    orders = []
    for epoch in range(2):
        one.set_epoch(epoch)
        orders.append(list(one))
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]) == data  # reshuffled per epoch


def test_sampler_resumes_inside_an_epoch():
    data = list(range(40))
    full = ResumableSampler(data, num_replicas=2, rank=1, seed=1)
    full.set_epoch(2)
    expected = list(full)
    # 3 batches of 4 on each of 2 ranks were trained on: 24 examples of epoch 2's order
    state = ResumableSampler(data, num_replicas=2, rank=1, seed=1)
    state.set_epoch(2)
    saved = state.state_dict(consumed=3 * 4 * 2)
    assert saved["epoch"] == 2 and saved["consumed"] == 24
    resumed = ResumableSampler(data, num_replicas=2, rank=1, seed=1)
    it = iter(resumed)                       # created before the state is loaded (FSDP2 / DeepSpeed order)
    resumed.load_state_dict(saved)
    assert list(it) == expected[12:]         # rank 1 skips its 12 and yields the rest
    assert len(resumed) == len(full)         # the full epoch's length (Lightning counts what was done)
    resumed.set_epoch(3)
    fresh = ResumableSampler(data, num_replicas=2, rank=1, seed=1)
    fresh.set_epoch(3)
    assert list(resumed) == list(fresh)      # the next epoch starts from its beginning
    # a finished epoch resumes at the start of the next one; another dataset size starts the epoch over
    assert state.state_dict(consumed=40) == {**saved, "epoch": 3, "consumed": 0}
    other = ResumableSampler(list(range(41)), seed=1)
    other.load_state_dict(saved)
    assert len(list(other)) == 41
    # without the trainer's count, the indices handed out are used (exact with num_workers=0)
    counted = ResumableSampler(data, seed=1)
    it = iter(counted)
    [next(it) for _ in range(6)]
    assert counted.state_dict()["consumed"] == 6


@pytest.mark.parametrize("stop", [0, 2, 5, 7, 9, 11])
def test_a_repeating_sampler_gives_each_window_mu_times_and_resumes_inside_a_repeat(stop):
    """repeat 3, window 4 per rank (GRPO's num_iterations over batch x accumulation), 2 ranks, 22 examples: each
    rank's whole windows of 4, three times each, the last partial window left out; a resume after `stop` batches of
    2 (inside a window's repeats or between windows) yields exactly the rest of the uninterrupted stream."""
    data = list(range(22))
    make = lambda: ResumableSampler(data, num_replicas=2, rank=1, seed=4, repeat=3, window=4)  # noqa: E731
    full = make()
    stream = list(full)
    shard = list(ResumableSampler(data, num_replicas=2, rank=1, seed=4))           # 11 indices on rank 1
    assert stream == shard[0:4] * 3 + shard[4:8] * 3 and len(full) == len(stream) == 24   # shard[8:11]: partial
    saved = make().state_dict(consumed=stop * 2 * 2)                                # stop batches of 2, on 2 ranks
    resumed = make()
    resumed.load_state_dict(saved)
    assert list(resumed) == stream[stop * 2:]
    assert make().state_dict(consumed=24 * 2)["epoch"] == 1                          # the epoch is done
    other = ResumableSampler(data, num_replicas=2, rank=1, seed=4, repeat=2, window=4)
    other.load_state_dict(saved)                                                    # another repeat: start over
    assert list(other) == shard[0:4] * 2 + shard[4:8] * 2


# -- kill and resume through the CLI -------------------------------------------------------------------------


class KillAt(Callback):
    """Test helper, loaded by the CLI subprocess from tests/: SIGKILL this process inside optimizer step
    `step` (0-based), after its backward pass and before the optimizer runs, like a crash or an OOM kill."""

    def __init__(self, step: int):
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(Callback):
    """Test helper: send `signal` (a name) to this process inside optimizer step `step` (0-based), after its
    backward pass and before the optimizer runs, as `kill` or Ctrl-C would."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step, self.signal = step, signal

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class SignalInValidation(Callback):
    """Test helper: SIGTERM this process at the first batch of the validation that follows optimizer step `step`
    (1-based global step count), as a preemption during a long evaluation would."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.global_step == self.step \
                and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


# 32 examples, batch 4, accumulation 2: 4 optimizer steps per epoch; 10 steps cross two epoch boundaries.
# LoRA with dropout makes training random (RNG restore matters); validation every 4 batches (its own RNG use
# must not shift training's); a checkpoint every 3 steps.
RUN = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
       "--model.init_args.policy.name", "builtin:tiny",
       "--model.init_args.policy.lora", "{r: 4, alpha: 8, dropout: 0.1}",
       "--model.init_args.optim.lr", "0.01", "--model.init_args.optim.warmup_steps", "2",
       "--data.init_args.train.limit", "32", "--data.init_args.val.val.limit", "8",
       "--data.init_args.batch_size", "4", "--trainer.accumulate_grad_batches", "2",
       "--trainer.val_check_interval", "4", "--trainer.max_steps", "10", "--trainer.max_epochs", "-1", "--trainer.log_every_n_steps", "1",
       "--trainer.logger.init_args.name", "resume", "--checkpoint.every_n_train_steps", "3",
       "--trainer.enable_model_summary", "false", "--export.enabled", "false"]


def scalars(version_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(glob.glob(str(version_dir / "events.out.tfevents.*"))[0])
    ea.Reload()
    return {e.step: e.value for e in ea.Scalars(tag)} if tag in ea.Tags()["scalars"] else {}


def run_in_process(args: list[str], cwd: Path, monkeypatch) -> None:
    """A single-process CLI run inside pytest (no interpreter start-up to pay)."""
    from lit_align.cli import LitAlignCLI

    monkeypatch.chdir(cwd)
    LitAlignCLI(args=args)


def assert_same_state(a: Path, b: Path, atol: float = 1e-6) -> None:
    ca, cb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    assert ca["global_step"] == cb["global_step"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for k in ca["state_dict"]:
        torch.testing.assert_close(ca["state_dict"][k], cb["state_dict"][k], atol=atol, rtol=0, msg=k)
    oa, ob = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(oa[i][name], ob[i][name], atol=atol, rtol=0)
    assert ca["lr_schedulers"] == cb["lr_schedulers"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: RUN without interruption (shared by the tests of this module)."""
    ref_dir = tmp_path_factory.mktemp("uninterrupted")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            run_in_process(RUN, ref_dir, mp)
    finally:
        torch.set_num_threads(before)
    return ref_dir


def test_killed_run_resumes_exactly(tmp_path, monkeypatch, one_thread, uninterrupted):
    ref_dir, run_dir = uninterrupted, tmp_path / "interrupted"
    run_dir.mkdir()

    killed = run_cli([*RUN, "--trainer.callbacks+=test_resume.KillAt", "--trainer.callbacks.step", "7"],
                     cwd=run_dir, env=ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = run_dir / "logs" / "resume" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == 6 and saved["epoch"] == 1  # killed in epoch 1, 2 steps after its start
    assert saved["AlignDataModule"]["train_sampler"] == {**saved["AlignDataModule"]["train_sampler"],
                                                         "epoch": 1, "consumed": 16}

    run_in_process([*RUN, "--ckpt_path", "last"], run_dir, monkeypatch)

    ref = scalars(ref_dir / "logs" / "resume" / "version_0", "train/loss")
    resumed = scalars(run_dir / "logs" / "resume" / "version_1", "train/loss")
    assert sorted(ref) == list(range(10)) and sorted(resumed) == list(range(6, 10))
    for step, loss in resumed.items():
        assert abs(loss - ref[step]) <= 1e-6, (step, loss, ref[step])
    assert_same_state(ref_dir / "logs" / "resume" / "checkpoints" / "last.ckpt", ckpt)


def test_signals_stop_after_the_step_with_a_checkpoint_and_resume_exactly(tmp_path, monkeypatch, one_thread,
                                                                          uninterrupted):
    """SIGTERM (a subprocess: `kill`) in step 5, then SIGINT (Ctrl-C, in process) in step 7 of the resumed run:
    each finishes its step, writes last.ckpt, says how to resume and exits 128 + signal number; the run resumed
    a second time ends where the uninterrupted one ends, with the same per-step losses."""
    from lit_align.cli import main

    ckpts = tmp_path / "logs" / "resume" / "checkpoints"
    term = run_cli([*RUN, "--trainer.callbacks+=test_resume.SignalAt", "--trainer.callbacks.step", "5"],
                   cwd=tmp_path, env=ONE_THREAD)
    assert term.returncode == 128 + signal.SIGTERM, term.stderr[-3000:]
    assert "SIGTERM: interrupted at step 6; resume with --ckpt_path last" in term.stderr
    assert "Traceback" not in term.stderr
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 6  # step 5 was finished

    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGINT)  # pytest's Ctrl-C handler (SIG_IGN when run as a background job)
    with pytest.raises(SystemExit) as stopped:
        main([*RUN, "--ckpt_path", "last", "--trainer.callbacks+=test_resume.SignalAt", "--trainer.callbacks.step", "7",
              "--trainer.callbacks.signal", "SIGINT"])
    assert stopped.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # the handler it found is back
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 8
    assert not list(ckpts.glob("last-v*.ckpt"))

    run_in_process([*RUN, "--ckpt_path", "last"], tmp_path, monkeypatch)
    ref = scalars(uninterrupted / "logs" / "resume" / "version_0", "train/loss")
    runs = [scalars(tmp_path / "logs" / "resume" / f"version_{v}", "train/loss") for v in range(3)]
    assert [sorted(r) for r in runs] == [list(range(6)), [6, 7], [8, 9]]
    for run in runs:
        for step, loss in run.items():
            assert abs(loss - ref[step]) <= 1e-6, (step, loss, ref[step])
    assert_same_state(uninterrupted / "logs" / "resume" / "checkpoints" / "last.ckpt", ckpts / "last.ckpt")


def test_a_signal_during_validation_stops_at_once_and_resumes_exactly(tmp_path, monkeypatch, one_thread,
                                                                     uninterrupted):
    """SIGTERM during the validation after step 4: the run stops without finishing it (nor training step 5),
    with step 4's checkpoint; the resumed run trains on from step 4 with the uninterrupted run's losses and
    validates at its next validation step, and ends in the same state."""
    ckpts = tmp_path / "logs" / "resume" / "checkpoints"
    term = run_cli([*RUN, "--trainer.callbacks+=test_resume.SignalInValidation", "--trainer.callbacks.step", "4"],
                   cwd=tmp_path, env=ONE_THREAD)
    assert term.returncode == 128 + signal.SIGTERM, term.stderr[-3000:]
    assert "SIGTERM: interrupted at step 4; resume with --ckpt_path last" in term.stderr, term.stderr[-3000:]
    assert "Traceback" not in term.stderr
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 4
    first = tmp_path / "logs" / "resume" / "version_0"
    assert sorted(scalars(first, "train/loss")) == [0, 1, 2, 3]
    assert sorted(scalars(first, "val/loss")) == [1]  # (steps are 0-based: the validation after step 2)

    run_in_process([*RUN, "--ckpt_path", "last"], tmp_path, monkeypatch)
    ref = scalars(uninterrupted / "logs" / "resume" / "version_0", "train/loss")
    resumed = tmp_path / "logs" / "resume" / "version_1"
    assert sorted(scalars(resumed, "train/loss")) == list(range(4, 10))
    for step, loss in scalars(resumed, "train/loss").items():
        assert abs(loss - ref[step]) <= 1e-6, (step, loss, ref[step])
    ref_val = scalars(uninterrupted / "logs" / "resume" / "version_0", "val/loss")
    assert sorted(ref_val) == [1, 3, 5, 7, 9] and sorted(scalars(resumed, "val/loss")) == [5, 7, 9]
    for step, loss in scalars(resumed, "val/loss").items():
        assert abs(loss - ref_val[step]) <= 1e-6, (step, loss, ref_val[step])
    assert_same_state(uninterrupted / "logs" / "resume" / "checkpoints" / "last.ckpt", ckpts / "last.ckpt")


def test_resume_from_nothing_starts_from_scratch_and_a_finished_run_is_left_alone(tmp_path, monkeypatch, capsys,
                                                                                 one_thread):
    import warnings

    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    run = [*RUN, "--model.init_args.optim.schedule", "constant", "--trainer.max_steps", "2", "--ckpt_path", "last"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(run)
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "from scratch" in line] == [
        f"lit_align: --ckpt_path last: no checkpoint in {Path('logs', 'resume', 'checkpoints')}: starting from scratch"]
    assert not [w for w in caught if "no last checkpoint" in str(w.message)]  # not Lightning's hint as well
    last = tmp_path / "logs" / "resume" / "checkpoints" / "last.ckpt"
    written = last.stat().st_mtime_ns
    assert torch.load(last, weights_only=False)["global_step"] == 2

    with pytest.raises(SystemExit) as finished:
        main(run)
    assert finished.value.code == 0
    err = capsys.readouterr().err
    assert "is finished (step 2; trainer.max_steps 2): nothing to train" in err
    assert "--ckpt_path last --trainer.max_steps 4" in err
    assert last.stat().st_mtime_ns == written  # not rewritten

    # changed settings are refused, listed (the checkpoint's model no longer silently replaces the command line's)
    for changed, words in [(["--model.init_args.optim.lr", "0.02"], ["model.init_args.optim.lr: 0.01 in the "
                                                                       "checkpoint, 0.02 now"]),
                           (["--model.init_args.policy.name", "builtin:small", "--ckpt_path", str(last)],
                            ["model.init_args.policy.name: 'builtin:tiny' in the checkpoint, 'builtin:small' now"])]:
        with pytest.raises(SystemExit) as refused:
            main([*run, "--trainer.max_steps", "4", *changed])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and "changes settings the checkpoint" in err and "Traceback" not in err
        for w in words:
            assert w in err, err
    assert last.stat().st_mtime_ns == written
    main([*run, "--trainer.max_steps", "3", "--model.init_args.policy.logits_chunk", "8"])  # compute-only: applied
    assert "applying compute-only changes: model.init_args.policy.logits_chunk: 0 in the checkpoint, 8 now" in \
        capsys.readouterr().err
    assert torch.load(last, weights_only=False)["global_step"] == 3

    # a run that ends on max_epochs with a validation at its last step (last.ckpt written mid-epoch by it, then
    # again at the end): resuming it is finished too, and makes no new version folder
    epochs = [*RUN, "--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.logger.init_args.name", "epochs",
              "--ckpt_path", "last"]
    main(epochs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as finished:
        main(epochs)
    assert finished.value.code == 0
    assert "is finished (epoch 1; trainer.max_epochs 1)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "logs" / "epochs").iterdir()) == ["checkpoints", "version_0"]


# -- which run a checkpoint belongs to, and what a resume may change (lit_align/resume.py) ------------------------


def test_a_fresh_fit_never_overwrites_another_runs_checkpoints(tmp_path, monkeypatch, capsys, one_thread):
    """The README's fifth command (a short run with another batch size) after a run of the same experiment: refused
    in one sentence, the first run's checkpoints untouched; under another name it runs. An explicit --ckpt_path from
    another folder is refused in the same way (its run would overwrite this folder's)."""
    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    first = [*RUN, "--trainer.max_steps", "4"]
    main(first)
    ckpts = tmp_path / "logs" / "resume" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    capsys.readouterr()
    for extra in (["--trainer.max_steps", "2", "--data.init_args.batch_size", "2"],
                  ["--ckpt_path", str(tmp_path / "elsewhere.ckpt")]):
        if "--ckpt_path" in extra:
            (tmp_path / "elsewhere.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes())
        with pytest.raises(SystemExit) as refused:
            main([*RUN, *extra])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and "Traceback" not in err
        assert (f"{Path('logs', 'resume', 'checkpoints')} holds the checkpoints of an earlier run of this experiment "
                "(newest: last.ckpt, step 4), which a new run would overwrite. Resume that run with --ckpt_path last, "
                "start this one under another name (--trainer.logger.init_args.name NAME)") in err, err
        assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "logs" / "resume").iterdir()) == ["checkpoints", "version_0"]
    # its cosine schedule ran to step 4: a longer run is another schedule (refused); the same one is finished
    with pytest.raises(SystemExit) as refused:
        main([*first, "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert refused.value.code == 2 and "trainer.max_steps: 4 in the checkpoint, 8 now (the learning-rate schedule runs " \
        "to the last step)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as finished:
        main([*first, "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert finished.value.code == 0 and "is finished (step 4; trainer.max_steps 4)" in err
    assert "its learning-rate schedule ran to this last step, so it is not trained further as the same run" in err
    main([*RUN, "--trainer.max_steps", "2", "--trainer.logger.init_args.name", "short"])
    assert torch.load(tmp_path / "logs" / "short" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "empty"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, monkeypatch, capsys, one_thread, damage):
    """A damaged last.ckpt beside a complete epoch=...-step=N.ckpt: --ckpt_path last resumes from the complete one
    and says so (never from scratch)."""
    import warnings

    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    run = [*RUN, "--model.init_args.optim.schedule", "constant", "--model.init_args.optim.warmup_steps", "0"]
    main([*run, "--trainer.max_steps", "4"])  # checkpoints every 3 steps: epoch=...-step=3.ckpt, and last.ckpt (4)
    ckpts = tmp_path / "logs" / "resume" / "checkpoints"
    [kept] = ckpts.glob("epoch=*-step=3.ckpt")
    last = ckpts / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[: len(data) // 2], "zeroed": bytes(len(data)), "empty": b""}[damage])
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([*run, "--trainer.max_steps", "5", "--ckpt_path", "last"])
    said = " ".join(str(w.message) for w in caught)
    assert f"resuming from the newest complete checkpoint in {Path('logs', 'resume', 'checkpoints')}, {kept.name}" in \
        said, said
    assert "from scratch" not in capsys.readouterr().err
    resumed = scalars(tmp_path / "logs" / "resume" / "version_1", "train/loss")
    assert sorted(resumed) == [3, 4]  # from step 3, not 0
    assert torch.load(last, weights_only=False)["global_step"] == 5


def test_resume_refuses_changes_to_data_and_trainer_settings(tmp_path, monkeypatch, capsys, one_thread):
    """Every change that alters what the resumed steps compute is refused, listed, with the option that forces it;
    evaluation-only changes, and devices/batch/accumulation changed together at the same global batch, pass; a
    longer max_steps passes where the schedule is constant."""
    from lit_align.cli import main

    monkeypatch.chdir(tmp_path)
    run = [*RUN, "--model.init_args.optim.schedule", "constant", "--model.init_args.optim.warmup_steps", "0"]
    main([*run, "--trainer.max_steps", "2"])
    last = tmp_path / "logs" / "resume" / "checkpoints" / "last.ckpt"
    written = last.stat().st_mtime_ns
    resume = [*run, "--trainer.max_steps", "4", "--ckpt_path", "last"]
    (tmp_path / "other.jsonl").write_text('{"prompt": "a", "completion": "b"}\n' * 40)
    for changed, said in [
        (["--data.init_args.batch_size", "2"], "the global batch (batch_size x accumulate_grad_batches x world_size): "
                                               "8 (4 x 2 x 1) in the checkpoint, 4 (2 x 2 x 1) now"),
        (["--data.init_args.train", str(tmp_path / "other.jsonl")], "data.init_args.train"),
        (["--data.init_args.train.limit", "24"], "data.init_args.train.limit: 32 in the checkpoint, 24 now"),
        (["--data.init_args.max_length", "100"], "data.init_args.max_length"),
        (["--seed_everything", "3"], "seed_everything: 0 in the checkpoint, 3 now"),
        (["--data.init_args.seed", "3"], "data.init_args.seed: 0 in the checkpoint, 3 now"),
        (["--trainer.gradient_clip_val", "0.5"], "trainer.gradient_clip_val: None in the checkpoint, 0.5 now"),
    ]:
        with pytest.raises(SystemExit) as refused:
            main([*resume, *changed])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and "changes settings the checkpoint" in err and said in err, (changed, err)
        assert "--checkpoint.force_resume true" in err and "Traceback" not in err
    assert last.stat().st_mtime_ns == written
    # passes: another val set size and eval batch size; batch 2 x accumulation 4 = the same global batch of 8
    main([*resume, "--data.init_args.val.val.limit", "4", "--data.init_args.eval_batch_size", "2",
          "--data.init_args.batch_size", "2", "--trainer.accumulate_grad_batches", "4"])
    assert "the global batch (batch_size x accumulate_grad_batches x world_size): 8 (4 x 2 x 1) in the checkpoint, 8 " \
           "(2 x 4 x 1) now" in capsys.readouterr().err
    assert torch.load(last, weights_only=False)["global_step"] == 4
    # forced: resumed with the change said
    main([*run, "--trainer.max_steps", "5", "--ckpt_path", "last", "--seed_everything", "3",
          "--checkpoint.force_resume", "true"])
    assert "resuming with changed settings: seed_everything: 0 in the checkpoint, 3 now" in capsys.readouterr().err
    assert torch.load(last, weights_only=False)["global_step"] == 5


def test_a_short_run_ends_with_a_validation_of_its_last_step(tmp_path, monkeypatch, one_thread):
    """max_steps between two validations: the val curves still end at the last step (once: a run whose last step
    is a validation step validates once)."""
    monkeypatch.chdir(tmp_path)
    run_in_process([*RUN, "--trainer.max_steps", "3"], tmp_path, monkeypatch)  # validations every 2 steps
    assert sorted(scalars(tmp_path / "logs" / "resume" / "version_0", "val/loss")) == [1, 2]
    run_in_process([*RUN, "--trainer.max_steps", "4", "--trainer.logger.init_args.name", "even"], tmp_path, monkeypatch)
    assert sorted(scalars(tmp_path / "logs" / "even" / "version_0", "val/loss")) == [1, 3]
