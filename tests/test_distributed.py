"""Two processes on CPU (gloo), through the CLI in a subprocess, give the same run as one process with twice the
batch: SFT under DDP (configs/strategies/ddp.yaml), DPO under FSDP2 (configs/strategies/fsdp2.yaml, Lightning's
ModelParallelStrategy) with its reference as a frozen copy (sharded like the policy) or a precomputed cache.
Compared: the train metrics at every step, val/loss (torchmetrics, synchronised), and the final weights (FSDP2:
gathered from its sharded checkpoint by `lit_align export`, and by the export at the end of fit). The base
class normalises the loss over the global count of the step (target tokens, pairs) and each rank reads a
disjoint half of every batch, so only float rounding differs. Also: the export command, GPU-only paths."""

import math
import re

import pytest
import torch
from conftest import REPO, requires_gpu, run_cli
from lightning.pytorch import Callback
from safetensors.torch import load_file
from test_resume import ONE_THREAD, assert_same_state, one_thread, run_in_process, scalars  # noqa: F401
from lit_align.layouts import LAYOUTS

CONFIG = str(REPO / "configs" / "quickstart.yaml")
STRATEGIES = REPO / "configs" / "strategies"
COMMON = ["--model.init_args.policy.name", "builtin:tiny", "--model.init_args.optim.warmup_steps", "1",
          "--data.init_args.train.limit", "64", "--data.init_args.val.val.limit", "16",
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1",
          "--trainer.accelerator", "cpu", "--trainer.enable_model_summary", "false"]
TOL = 1e-5   # metrics; measured: train/loss differs by <= 5e-7, token accuracy and val/loss not at all
WTOL = 5e-5  # weights; measured: <= 6e-6 after 4 AdamW steps at lr 3e-3 (Adam magnifies tiny gradient differences)


def single(tmp_path, monkeypatch, name: str, batch: int) -> None:
    run_in_process(["fit", "--config", CONFIG, *COMMON, "--data.init_args.batch_size", str(batch),
                    "--trainer.logger.init_args.name", name], tmp_path, monkeypatch)


def two_processes(tmp_path, name: str, strategy: str, batch: int, *extra: str) -> None:
    out = run_cli(["fit", "--config", CONFIG, "--config", str(STRATEGIES / strategy), *COMMON,
                   "--trainer.devices", "2", "--data.init_args.batch_size", str(batch),
                   "--trainer.logger.init_args.name", name, *extra], cwd=tmp_path, env=ONE_THREAD, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "terminate called" not in out.stderr, out.stderr[-4000:]  # the process group is destroyed (cli.main)


def assert_same_curves(a, b, tags=("train/loss", "train/token_accuracy", "val/loss")) -> None:
    for tag in tags:
        sa, sb = scalars(a, tag), scalars(b, tag)
        assert sa and sorted(sa) == sorted(sb), (tag, sa, sb)
        for step in sa:
            assert abs(sa[step] - sb[step]) <= TOL, (tag, step, sa[step], sb[step])


def test_ddp_two_processes_equal_one_with_twice_the_batch(tmp_path, monkeypatch, one_thread):  # noqa: F811
    single(tmp_path, monkeypatch, "one", batch=8)
    two_processes(tmp_path, "ddp", "ddp.yaml", 4)
    logs = tmp_path / "logs"
    assert_same_curves(logs / "one" / "version_0", logs / "ddp" / "version_0")
    assert_same_state(logs / "one" / "checkpoints" / "last.ckpt", logs / "ddp" / "checkpoints" / "last.ckpt",
                      atol=WTOL)
    # the quickstart's sample generations (callbacks/generations.py) under DDP: the prompts split over the ranks,
    # gathered, written once by rank 0: the same file as one process's (at step 0 the weights are the same)
    import json

    files = {name: sorted(p.name for p in (logs / name / "version_0" / "generations").glob("*.jsonl"))
             for name in ("one", "ddp")}
    assert files["one"] == files["ddp"] == ["step_000000.jsonl", "step_000004.jsonl"], files
    rows = {name: [json.loads(line) for line in (logs / name / "version_0" / "generations" / "step_000000.jsonl")
                   .read_text().splitlines()] for name in ("one", "ddp")}
    assert len(rows["ddp"]) == 4 and rows["one"] == rows["ddp"]


def test_deepspeed_is_refused_for_training():
    """ZeRO keeps the reduced gradients in its own partitions, out of reach of the exact rescale of p.grad: fit
    with DeepSpeed is refused with a message (found by class name: no deepspeed needed to say so), every objective."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

    from lit_align.errors import LitAlignError
    from lit_align.objectives import DPO, SFT, IWSFT, PrefixDPO
    from lit_align.objectives.base import check_strategy

    deepspeed = object.__new__(DeepSpeedStrategy)   # its __init__ needs deepspeed installed; the class does not
    for cls in (SFT, IWSFT, DPO, PrefixDPO):
        obj = cls()
        obj._trainer = SimpleNamespace(strategy=deepspeed)
        with pytest.raises(LitAlignError, match="DeepSpeedStrategy is not supported for training.*fsdp2.yaml"):
            obj.setup("fit")
        obj.setup("validate")   # evaluation computes no gradients: allowed
    check_strategy(DDPStrategy())
    check_strategy(SingleDeviceStrategy("cpu"))


# -- GPU-only paths: refused with a plain message without a GPU, exercised with one -----------------------------


def test_qlora_without_gpu_is_refused_with_a_clear_message(tmp_path):
    from lit_align.errors import LitAlignError
    from lit_align.modeling.models import LoraSpec, ModelSpec, builtin_tokenizer, load_model

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = ModelSpec(name=str(tmp_path), quantization="4bit", lora=LoraSpec())
    with pytest.raises(LitAlignError, match="needs a CUDA GPU"):
        load_model(spec, builtin_tokenizer())
    with pytest.raises(LitAlignError, match="set policy.lora"):
        load_model(ModelSpec(name=str(tmp_path), quantization="4bit"), builtin_tokenizer())


@requires_gpu
def test_qlora_bf16_trains_on_a_gpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    from lit_align.modeling.models import ModelSpec, builtin_tokenizer, load_model

    tok = builtin_tokenizer()
    load_model(ModelSpec(name="builtin:tiny"), tok).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    out = run_cli(["fit", "--config", CONFIG, "--config", str(STRATEGIES / "qlora.yaml"), *COMMON,
                   "--model.init_args.policy.name", str(tmp_path / "base"), "--trainer.accelerator", "gpu",
                   "--trainer.devices", "1", "--trainer.max_steps", "2", "--trainer.logger.init_args.name", "qlora"],
                  cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "logs" / "qlora" / "version_0" / "hf_model" / "adapter_config.json").exists()


@requires_gpu
def test_fsdp_bf16_on_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    out = run_cli(["fit", "--config", CONFIG, "--config", str(STRATEGIES / "fsdp.yaml"), *COMMON,
                   "--trainer.accelerator", "gpu", "--trainer.devices", "2", "--trainer.logger.init_args.name", "fsdp"],
                  cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "logs" / "fsdp" / "version_0" / "hf_model" / "model.safetensors").exists()


class CheckReference(Callback):
    """Test helper, loaded by the ranks from tests/: when training starts, the reference is frozen, outside the
    optimizer and on this rank's device; a copy is sharded like the policy (FSDP2); a cache holds no model."""

    def __init__(self, mode: str):
        self.mode = mode
        self.calls, self.prepared = 0, None

    def on_fit_start(self, trainer, pl_module):  # before the objective's on_fit_start (the cache's computation)
        self.hook = pl_module.model.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))

    def _prepared(self):
        if self.prepared is None:   # the policy's forward passes while the objective prepared its reference
            self.prepared = self.calls
            self.hook.remove()

    def on_sanity_check_start(self, trainer, pl_module):
        self._prepared()

    def on_train_start(self, trainer, pl_module):
        self._prepared()
        ref = list(pl_module.reference.parameters())
        optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        if self.mode == "cache":
            assert not ref and pl_module.reference.tables, "a cached reference keeps no model in memory"
            # the two ranks share the work: train 32 / eval batch 8 = 4 batches, val 16 / 8 = 2, half each
            assert self.prepared == 3, f"this rank ran {self.prepared} reference batches, not 3 of 6"
            return
        assert ref and all(not p.requires_grad and id(p) not in optimized for p in ref), "reference not frozen"
        assert all(p.device == pl_module.device for p in ref), "reference on another device"
        assert all(type(p).__name__ == "DTensor" for p in ref), "reference copy not sharded"
        assert all(type(p).__name__ == "DTensor" for p in pl_module.model.parameters()), "policy not sharded"


@pytest.mark.parametrize("mode", ["copy", "cache"])
def test_dpo_under_fsdp2_equals_one_process(tmp_path, monkeypatch, one_thread, mode):  # noqa: F811
    """DPO under FSDP2 with a frozen reference copy (sharded like the policy) or a precomputed cache (computed
    through the sharded policy) equals one process with twice the batch (step 0: loss log 2); the copy run's
    final weights, gathered from its sharded checkpoint and by the end-of-fit export, equal one process's."""
    from lit_align.modeling.export import export_checkpoint

    def args(name: str, batch: int) -> list[str]:
        return ["--data.init_args.train.limit", "32", "--data.init_args.val.val.limit", "16",
                "--data.init_args.batch_size", str(batch), "--data.init_args.eval_batch_size", "8",
                "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
                "--trainer.enable_model_summary", "false", "--export.enabled", str(mode == "copy").lower(),
                "--model.init_args.reference.mode", mode, "--model.init_args.loss", "sigmoid",
                "--model.init_args.nll_weight", "0.0",  # plain DPO: loss log 2 while policy = reference
                "--model.init_args.reference.cache_dir", str(tmp_path / f"ref_cache_{name}")]

    dpo = str(REPO / "configs" / "dpo.yaml")
    run_in_process(["fit", "--config", dpo, *args("one", 8), "--trainer.logger.init_args.name", "one"],
                   tmp_path, monkeypatch)
    out = run_cli(["fit", "--config", dpo, "--config", str(STRATEGIES / "fsdp2.yaml"), *args("two", 4),
                   "--trainer.accelerator", "cpu",
                   "--trainer.logger.init_args.name", "fsdp2", "--trainer.callbacks+=test_distributed.CheckReference",
                   "--trainer.callbacks.mode", mode], cwd=tmp_path, env=ONE_THREAD, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    logs = tmp_path / "logs"
    assert abs(scalars(logs / "fsdp2" / "version_0", "train/loss")[0] - math.log(2)) < 1e-6
    assert_same_curves(logs / "one" / "version_0", logs / "fsdp2" / "version_0",
                       tags=("train/loss", "train/rewards/margins", "train/rewards/accuracy", "val/loss"))
    if mode == "cache":  # the same reference numbers, computed by one process and shared by two sharded ones
        for split in ("train", "val"):
            one, two = (sorted((tmp_path / f"ref_cache_{n}").glob(f"{split}-*.pt")) for n in ("one", "two"))
            assert len(one) == len(two) == 1
            for key in ("logps", "tokens"):
                assert torch.equal(torch.load(two[0])[key], torch.load(one[0])[key]), (split, key)
        return
    sharded = logs / "fsdp2" / "checkpoints" / "last.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2  # one shard file per rank
    exported = export_checkpoint(sharded, tmp_path / "exported")           # gathered without a process group
    ref = load_file(logs / "one" / "version_0" / "hf_model" / "model.safetensors")
    for weights in (load_file(exported / "model.safetensors"),               # from the checkpoint
                    load_file(logs / "fsdp2" / "version_0" / "hf_model" / "model.safetensors")):  # end of fit
        assert weights.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(weights[k], ref[k], atol=WTOL, rtol=0, msg=k)


def test_export_command_on_a_lora_checkpoint(tmp_path, one_thread):  # noqa: F811
    """`lit_align export CKPT OUT [--merge-lora]` on a single-file checkpoint: the adapter, or the merged model,
    gives the trained policy's logits."""
    from lightning.pytorch import Trainer
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lit_align.callbacks import RunCheckpoint
    from lit_align.cli import main
    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import LoraSpec, ModelSpec, load_model
    from lit_align.objectives import SFT, OptimSpec

    model = SFT(policy=ModelSpec(name="builtin:tiny", lora=LoraSpec(r=4)), optim=OptimSpec(lr=1e-2))
    data = AlignDataModule(train={"path": "builtin:sft", "limit": 16}, batch_size=4, max_length=64)
    data.connect(model.tokenizer, model.layout)
    Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[RunCheckpoint(dirpath=str(tmp_path / "ckpt"))]).fit(model, datamodule=data)
    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    main(["export", ckpt, str(tmp_path / "merged"), "--merge-lora"])
    main(["export", ckpt, str(tmp_path / "adapter")])
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        expected = model.model(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
        base = load_model(ModelSpec(name="builtin:tiny"), model.tokenizer)
        adapter = PeftModel.from_pretrained(base, tmp_path / "adapter")(ids).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(adapter, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("strategy", ["ddp.yaml", "fsdp2.yaml"])
def test_steered_validation_under_two_processes_equals_one(tmp_path, monkeypatch, one_thread, strategy):  # noqa: F811
    """A CAA vector applied during validation (callbacks/steering.py) under DDP and under FSDP2 (hooks on the
    sharded blocks) gives the same steered ab/p_match as in one process, and the steering is really on."""
    import yaml

    from lit_align.data.datamodule import AlignDataModule
    from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer
    from lit_align.steering.vectors import extract_from_data

    spec = ModelSpec(name="builtin:tiny")
    tok = load_tokenizer(spec)
    dm = AlignDataModule(train={"path": "builtin:organism", "limit": 16}, max_length=128)
    dm.connect(tok, LAYOUTS["pair"])
    dm.setup("fit")
    vector = extract_from_data(load_model(spec, tok), dm, "train").save(tmp_path / "v.safetensors")
    steered = tmp_path / "steered.yaml"
    steered.write_text(yaml.safe_dump({"trainer": {"callbacks": [{   # a random-init model's vector is small: x300
        "class_path": "lit_align.callbacks.SteerDuringEval",
        "init_args": {"vector": str(vector), "multiplier": 300.0, "layers": [1]}}]}}))
    args = ["--model.init_args.policy.name", "builtin:tiny", "--trainer.accelerator", "cpu",
            "--data.init_args.val", "{id: {path: builtin:organism, split: id, limit: 16, kind: pair}}",
            "--data.init_args.eval_batch_size", "4", "--trainer.enable_model_summary", "false"]
    run_in_process(["validate", "--config", CONFIG, *args, "--trainer.logger.init_args.name", "plain"], tmp_path,
                   monkeypatch)
    run_in_process(["validate", "--config", CONFIG, "--config", str(steered), *args,
                    "--trainer.logger.init_args.name", "one"], tmp_path, monkeypatch)
    out = run_cli(["validate", "--config", CONFIG, "--config", str(STRATEGIES / strategy), "--config", str(steered),
                   *args, "--trainer.devices", "2", "--trainer.logger.init_args.name", "two"], cwd=tmp_path,
                  env=ONE_THREAD, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    logs = tmp_path / "logs"
    for tag in ("val_id/ab/p_match", "val_id/logps/chosen"):
        value = {name: list(scalars(logs / name / "validate_0", tag).values()) for name in ("plain", "one", "two")}
        assert len(value["one"]) == 1 and len(value["two"]) == 1, tag
        assert abs(value["one"][0] - value["two"][0]) <= TOL, (tag, value)
    assert abs(value["one"][0] - value["plain"][0]) > 0.1, value   # steering moves the log-probs


# -- faults under DDP: every rank ends with one sentence, none waits for ever --------------------------------------


class StopRankAt(Callback):
    """Test helper, loaded by the CLI subprocess from tests/: rank `rank` stops itself (SIGSTOP, as Ctrl-Z or a
    debugger would) inside optimizer step `step`, after writing its pid to `stopped-<pid>` in the working directory.
    With `timeout_s`, every rank sets the process group's timeout to that once step 1 is done, i.e. once both ranks
    have joined and met in step 1's all-reduce: the run's own timeout can then be long enough for a slow start on a
    loaded machine (a rank importing for over 15 s had made the short timeout fire at start-up)."""

    def __init__(self, step: int, rank: int = 1, timeout_s: float | None = None):
        self.step, self.rank, self.timeout_s = step, rank, timeout_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import datetime

        from torch.distributed.distributed_c10d import _set_pg_timeout

        if self.timeout_s and trainer.global_step == 1:
            _set_pg_timeout(datetime.timedelta(seconds=self.timeout_s))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        import os
        import signal

        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            open(f"stopped-{os.getpid()}", "w").close()
            os.kill(os.getpid(), signal.SIGSTOP)


class FailSaveOnRank(Callback):
    """Test helper: on rank `rank`, writing the checkpoint of step `step` fails as on a full disk (ENOSPC)."""

    def __init__(self, step: int, rank: int = 0):
        self.step, self.rank = step, rank

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        import errno

        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            def full_disk(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")

            trainer.strategy.checkpoint_io.save_checkpoint = full_disk  # checkpoint.PartialFileCheckpointIO


FAULT = ["fit", "--config", CONFIG, "--config", str(STRATEGIES / "ddp.yaml"), *COMMON, "--trainer.max_steps", "6",
         "--trainer.devices", "2", "--data.init_args.batch_size", "4", "--export.enabled", "false",
         "--trainer.logger.init_args.name", "fault"]


def test_a_stopped_rank_ends_the_run_with_one_sentence_after_the_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP) in step 2: rank 0 waits the process group's timeout (15 s once both ranks are past
    step 1; 3 minutes to start), then stops with one sentence naming the wait (exit 1, no traceback) and ends the
    stopped rank; nothing is left running."""
    import os
    import time

    start = time.monotonic()
    out = run_cli([*FAULT, "--trainer.strategy.init_args.timeout", "0:03:00",
                   "--trainer.callbacks+=test_distributed.StopRankAt", "--trainer.callbacks.step", "2",
                   "--trainer.callbacks.timeout_s", "15"],
                  cwd=tmp_path, env=ONE_THREAD, timeout=400)
    assert out.returncode == 1, out.stderr[-3000:]
    assert time.monotonic() - start < 240
    message = out.stderr.split("lit_align: error: ")[-1]
    assert "Traceback" not in out.stderr and len(message.strip().splitlines()) == 1, out.stderr[-3000:]
    assert message.startswith("rank 0 of 2 waited 15 s in a collective operation"), message
    assert "trainer.strategy.init_args.timeout" in message and "--ckpt_path last" in message
    stopped = [int(p.name.split("-")[1]) for p in tmp_path.glob("stopped-*")]
    assert len(stopped) == 1
    for _ in range(50):  # the stopped rank was killed (SIGKILL); a zombie until its parent reaps it is gone too
        try:
            with open(f"/proc/{stopped[0]}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.1)
    else:
        os.kill(stopped[0], 9)
        raise AssertionError(f"rank 1 (pid {stopped[0]}) was left in state {state}")


def test_a_timeout_at_start_up_says_the_ranks_did_not_join(monkeypatch):
    """A rank that does not join the process group within the timeout (still importing on a loaded machine) fails
    init_process_group in the others: the sentence says so, with the rank when the launcher's environment tells it,
    and never tells an unknown rank to end "a stopped rank 0" (it may be rank 0)."""
    import datetime
    import socket

    from lit_align.callbacks.collective_timeout import collective_timeout

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(RuntimeError) as raised:  # rank 0 of 2 alone: rank 1 never comes
        torch.distributed.init_process_group("gloo", rank=0, world_size=2, init_method=f"tcp://127.0.0.1:{port}",
                                             timeout=datetime.timedelta(seconds=1))
    assert not torch.distributed.is_initialized()
    for name in ("RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")   # as Lightning's launcher leaves rank 0's environment
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = collective_timeout(raised.value)
    assert re.match(r"rank 0 of 2 waited \d s for the other ranks to join the process group at start-up", message)
    assert "the ranks this process launched are ended" in message and "collective operation" not in message
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    message = collective_timeout(raised.value)
    assert message.startswith("this process (its rank is not known: the process group was not set up yet) waited")
    assert "end any rank left running yourself" in message and "rank 0 yourself" not in message
    assert "trainer.strategy.init_args.timeout" in message and len(message.splitlines()) == 1


def test_a_checkpoint_that_fails_on_rank_0_stops_every_rank(tmp_path):
    """Rank 0 cannot write the checkpoint of step 4 (full disk): both ranks stop at once with rank 0's sentence
    (exit 2), instead of rank 1 waiting at the save's barrier; the checkpoint of step 2 is untouched."""
    out = run_cli([*FAULT, "--checkpoint.every_n_train_steps", "2",
                   "--trainer.callbacks+=test_distributed.FailSaveOnRank", "--trainer.callbacks.step", "4"],
                  cwd=tmp_path, env=ONE_THREAD, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("lit_align: error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], errors   # one per rank, the same
    assert "could not write the checkpoint" in errors[0] and "at step 4" in errors[0], errors
    assert "No space left on device" in errors[0] and "untouched (newest: last.ckpt)" in errors[0], errors
    ckpt = torch.load(tmp_path / "logs" / "fault" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert ckpt["global_step"] == 2
    assert not list((tmp_path / "logs" / "fault" / "checkpoints").glob(".*.partial"))


WEIGHTED_PAIRS = [0.5, 3.0, 1.0, 2.0, 0.25, 1.5, 4.0, 1.0]   # unequal: the ranks' halves of a batch weigh unlike
NEW_OBJECTIVES = {   # config -> strategy, extra options, the curves compared
    "listwise_dpo.yaml": ("fsdp2.yaml", [], ("train/loss", "train/rewards/ranking_accuracy", "val/loss",
                                             "val/rewards/ranking_accuracy")),
    "reward_model.yaml": ("fsdp2.yaml", [], ("train/loss", "train/rewards/accuracy", "val/loss",
                                             "val/rewards/accuracy")),
    "simpo.yaml": ("ddp.yaml", ["--model.init_args.pair_weights", "true"], ("train/loss", "train/rewards/margins",
                                                                             "val/loss", "val/logps/accuracy")),
    "orpo.yaml": ("fsdp2.yaml", ["--model.init_args.packed", "true"], ("train/loss", "train/nll",
                                                                       "train/log_odds_ratio", "val/loss")),
}


@pytest.mark.parametrize("config", NEW_OBJECTIVES)
def test_new_objectives_under_two_processes_equal_one(tmp_path, monkeypatch, one_thread, config):  # noqa: F811
    """2 processes x batch 4 give one process x batch 8's per-step losses and metrics: listwise DPO on ranked lists
    (its shared-context layout and a frozen reference copy, sharded), the reward model (its score head, sharded),
    ORPO packed, all three under FSDP2; SimPO with unequal per-pair weights under DDP (Σ w·ℓ / Σ w over both
    ranks' pairs, not a mean of the ranks' weighted means)."""
    import json

    from lit_align.data.synthetic import builtin_records

    strategy, extra, tags = NEW_OBJECTIVES[config]
    args = ["fit", "--config", str(REPO / "configs" / config), "--data.init_args.train.limit", "64",
            "--data.init_args.val.val.limit", "16", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
            "--trainer.log_every_n_steps", "1", "--trainer.accelerator", "cpu", "--export.enabled", "false",
            "--trainer.enable_model_summary", "false", *extra]
    if "pair_weights" in " ".join(extra):
        weighted = tmp_path / "weighted.jsonl"
        weighted.write_text("".join(json.dumps({**r, "weight": WEIGHTED_PAIRS[i % 8]}) + "\n"
                                    for i, r in enumerate(builtin_records("pairs", n=64))))
        args += ["--data.init_args.train.path", str(weighted)]
    run_in_process([*args, "--data.init_args.batch_size", "8", "--trainer.logger.init_args.name", "one"], tmp_path,
                   monkeypatch)
    out = run_cli([*args, "--config", str(STRATEGIES / strategy), "--trainer.devices", "2",
                   "--data.init_args.batch_size", "4", "--trainer.logger.init_args.name", "two"], cwd=tmp_path,
                  env=ONE_THREAD, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    assert_same_curves(tmp_path / "logs" / "one" / "version_0", tmp_path / "logs" / "two" / "version_0", tags)


GRPO_CONFIG = """\
model:
  class_path: lit_align.objectives.GRPO
  init_args:
    policy: {name: builtin:tiny}
    optim: {lr: 3.0e-3, schedule: constant}
    rewards: [{name: regex, pattern: "[0-9]"}]
    num_generations: 4
    max_new_tokens: 6
    loss_aggregation: token_mean
data:
  class_path: lit_align.data.AlignDataModule
  init_args:
    train: {path: builtin:sft, limit: 64}
    val:
      val: {path: builtin:sft, split: val, limit: 8}
    max_length: 64
trainer:
  max_steps: 3
  val_check_interval: 3
  log_every_n_steps: 1
  accelerator: cpu
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {save_dir: logs, name: one, default_hp_metric: false}
export: {enabled: false}
"""


def test_grpo_under_two_processes_equals_one(tmp_path, monkeypatch, one_thread):  # noqa: F811
    """Online RL under DDP: 2 processes x 2 prompts sample what 1 process x 4 prompts samples (each prompt's samples
    are seeded by the step and its index, not by a rank's RNG), so rewards, losses and weights agree: the loss is
    divided by the global token count of both ranks (DAPO's token_mean), not averaged per rank."""
    config = tmp_path / "grpo.yaml"
    config.write_text(GRPO_CONFIG)
    run_in_process(["fit", "--config", str(config), "--data.init_args.batch_size", "4"], tmp_path, monkeypatch)
    out = run_cli(["fit", "--config", str(config), "--config", str(STRATEGIES / "ddp.yaml"), "--trainer.devices", "2",
                   "--data.init_args.batch_size", "2", "--trainer.logger.init_args.name", "two"], cwd=tmp_path,
                  env=ONE_THREAD, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    logs = tmp_path / "logs"
    assert_same_curves(logs / "one" / "version_0", logs / "two" / "version_0",
                       ("train/loss", "train/reward", "train/rollout/completion_length", "val/reward"))
    spread = scalars(logs / "one" / "version_0", "train/rollout/zero_spread")
    assert spread and min(spread.values()) < 1, spread  # groups with a reward spread: a real gradient to compare
    assert_same_state(logs / "one" / "checkpoints" / "last.ckpt", logs / "two" / "checkpoints" / "last.ckpt",
                      atol=WTOL)
