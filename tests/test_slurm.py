"""SLURM: scripts/slurm/fit.sbatch in a faked allocation (SLURM variables; a fake `srun` that runs the task, a
fake `scontrol` that records what it is asked). The preemption signal arrives in the middle of a step: the run
finishes the step, writes last.ckpt, asks for a requeue and exits 0 without exporting a final model; started
again under the same job id (SLURM_RESTART_COUNT=1, as SLURM does) it resumes and ends where an uninterrupted
run ends. The sweep script is checked with a fake srun that only prints the command."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from lightning.pytorch import Callback
from test_resume import assert_same_state, run_in_process, scalars

TESTS = Path(__file__).resolve().parent
FIT, SWEEP = REPO / "scripts" / "slurm" / "fit.sbatch", REPO / "scripts" / "slurm" / "sweep.sbatch"

ARGS = ["--model.init_args.policy.name", "builtin:tiny", "--model.init_args.optim.warmup_steps", "2",
        "--data.init_args.train.limit", "48", "--data.init_args.val.val.limit", "8",
        "--data.init_args.batch_size", "4", "--trainer.max_steps", "8", "--trainer.max_epochs", "-1",
        "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1", "--trainer.accelerator", "cpu",
        "--trainer.logger.init_args.name", "slurm", "--trainer.enable_model_summary", "false"]
CONFIG = str(REPO / "configs" / "quickstart.yaml")


class WaitForSignalAt(Callback):
    """Test helper, loaded by the task from tests/: at the start of optimizer step `step`, tell the test
    (a file) and wait until the requeue signal has been received, so that it lands mid-step."""

    def __init__(self, step: int, ready_file: str):
        self.step, self.ready_file = step, ready_file

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        from lit_align.callbacks import SlurmRequeue

        requeue = next(cb for cb in trainer.callbacks if isinstance(cb, SlurmRequeue))
        Path(self.ready_file).write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not requeue.requested and time.monotonic() < deadline:
            time.sleep(0.02)


def fake_cluster(tmp_path: Path, job_id: str = "4242", **extra) -> dict:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(
        '#!/bin/bash\n# fake srun: one task; drop srun options, then run (or print) the command\n'
        'while [[ "$1" == -* ]]; do shift; done\n'
        'if [ -n "${FAKE_SRUN_ECHO:-}" ]; then printf "%s\\n" "$@"; exit 0; fi\n'
        'exec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{env.get('PATH', '')}",
        "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "lit_align", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
        "SLURM_NODELIST": "localhost", "SLURM_CPUS_PER_TASK": "1", "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS), **extra,
    })
    return env


def test_preempted_job_checkpoints_requeues_and_resumes(tmp_path, monkeypatch):
    ref_dir, job_dir = tmp_path / "uninterrupted", tmp_path / "job"
    ref_dir.mkdir(), job_dir.mkdir()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_in_process(["fit", "--config", CONFIG, *ARGS], ref_dir, monkeypatch)
    finally:
        torch.set_num_threads(before)

    ready = tmp_path / "at_step"
    env = fake_cluster(tmp_path)
    first = subprocess.Popen(["bash", str(FIT), CONFIG, *ARGS, "--trainer.callbacks+=test_slurm.WaitForSignalAt",
                              "--trainer.callbacks.step", "5", "--trainer.callbacks.ready_file", str(ready)],
                             cwd=job_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ready.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), first.communicate()[1][-3000:]
    os.kill(int(ready.read_text()), signal.SIGUSR1)  # SLURM's warning signal, in the middle of step 5
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-3000:]
    assert "preempted: checkpoint written to" in err and "job 4242 requeued" in err
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    ckpts = job_dir / "logs" / "slurm" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 6  # step 5 was finished
    assert not (job_dir / "logs" / "slurm" / "version_0" / "hf_model").exists()  # not a final model

    again = subprocess.run(["bash", str(FIT), CONFIG, *ARGS], cwd=job_dir, capture_output=True, text=True,
                           env=fake_cluster(tmp_path, SLURM_RESTART_COUNT="1"), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "restart 1" in again.stderr
    assert (job_dir / "logs" / "slurm" / "version_1" / "hf_model" / "config.json").exists()
    resumed = scalars(job_dir / "logs" / "slurm" / "version_1", "train/loss")
    ref = scalars(ref_dir / "logs" / "slurm" / "version_0", "train/loss")
    assert sorted(resumed) == [6, 7]
    for step, loss in resumed.items():
        assert abs(loss - ref[step]) <= 1e-6, (step, loss, ref[step])
    assert_same_state(ref_dir / "logs" / "slurm" / "checkpoints" / "last.ckpt", ckpts / "last.ckpt")


@pytest.mark.parametrize("task,expected", [(0, ["--model.init_args.beta", "0.05"]),
                                           (1, ["--model.init_args.beta", "0.3", "--model.init_args.loss", "ipo"])])
def test_sweep_array_task_runs_its_line(tmp_path, task, expected):
    sweep = tmp_path / "beta.txt"
    sweep.write_text("--model.init_args.beta 0.05\n--model.init_args.beta 0.3 --model.init_args.loss ipo\n")
    env = fake_cluster(tmp_path, job_id="77", SLURM_ARRAY_JOB_ID="70", SLURM_ARRAY_TASK_ID=str(task),
                       SLURM_RESTART_COUNT="2", FAKE_SRUN_ECHO="1")
    out = subprocess.run(["bash", str(SWEEP), "configs/dpo.yaml", str(sweep), "--config", "configs/strategies/ddp.yaml"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.split("\n")[:-1]
    assert argv[:6] == ["lit_align", "fit", "--config", "configs/dpo.yaml", "--config", "configs/strategies/ddp.yaml"]
    assert argv[6:6 + len(expected)] == expected
    rest = argv[6 + len(expected):]
    assert rest[rest.index("--trainer.logger.init_args.name") + 1] == f"beta-70-{task}"
    assert rest[-2:] == ["--ckpt_path", "last"]  # a requeued task resumes its own experiment
    missing = subprocess.run(["bash", str(SWEEP), "configs/dpo.yaml", str(sweep)], cwd=tmp_path, text=True,
                             env={**env, "SLURM_ARRAY_TASK_ID": "5"}, capture_output=True, timeout=60)
    assert missing.returncode == 2 and "no line 6" in missing.stderr


def test_a_second_stop_signal_stops_at_once_only_before_the_checkpoint_is_written():
    """The README's promise: a second SIGTERM / Ctrl-C before the first one's checkpoint is written stops at once
    without it; once it is written, a second signal changes nothing (the run ends as after one, checkpoint kept)."""
    from lit_align.callbacks.requeue import SlurmRequeue

    callback = SlurmRequeue()
    callback._previous = {signal.SIGTERM: signal.SIG_DFL}  # as if installed (the handler restores these)
    before = signal.getsignal(signal.SIGTERM)
    try:
        callback._on_stop_signal(signal.SIGTERM, None)
        assert callback.stop_signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="SIGTERM received twice: stopping without a checkpoint"):
            callback._on_stop_signal(signal.SIGTERM, None)
        callback._previous = {signal.SIGTERM: before}
        callback.stop_checkpoint = "logs/x/checkpoints/last.ckpt"  # written: the run is ending with it
        callback._on_stop_signal(signal.SIGINT, None)               # no KeyboardInterrupt
    finally:
        signal.signal(signal.SIGTERM, before)
