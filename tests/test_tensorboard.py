"""What TensorBoard shows after a run (callbacks/tensorboard.py): the custom-scalars layout for the objective,
one learning-rate curve, `epoch` out of the way, the resolved config in HParams and the Text tab; and the
plain progress lines a run prints when stdout is not a terminal (callbacks/progress.py)."""

import glob
import re

from conftest import REPO, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from test_resume import ONE_THREAD, run_in_process

from lit_align.callbacks.tensorboard import flat_config, layout_for

DPO = ["fit", "--config", str(REPO / "configs" / "dpo.yaml"), "--data.init_args.train.limit", "32",
       "--data.init_args.val", "{val: {path: builtin:pairs, split: val, limit: 8}, "
       "ood: {path: builtin:pairs, split: val, limit: 8}}", "--data.init_args.batch_size", "4",
       "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
       "--trainer.logger.init_args.name", "tb", "--export.enabled", "false", "--trainer.enable_model_summary",
       "false"]


def _events(version_dir):
    ea = EventAccumulator(glob.glob(str(version_dir / "events.out.tfevents.*"))[0],
                          size_guidance={"tensors": 0, "scalars": 0})
    ea.Reload()
    return ea


def _layout(ea) -> dict:
    layout = layout_pb2.Layout()
    layout.ParseFromString(ea.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    return {c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in layout.category}


def test_layout_groups_every_set_on_one_chart_per_metric():
    tags = {"train/loss", "val/loss", "val_ood/loss", "train/rewards/chosen", "train/rewards/rejected",
            "val/rewards/chosen", "val/rewards/rejected", "val_ood/rewards/accuracy", "train/lr",
            "train/weights/ess", "probe/x/chosen", "val_id/ab/p_match", "val/gen/final_number"}
    layout = layout_for(tags)
    assert list(layout) == ["loss and accuracy", "rewards (β·log π/π_ref)", "importance weights", "A/B contrast",
                            "generations", "optimization"]
    assert layout["generations"] == {"gen/final_number": ["Multiline", ["^val/gen/final_number$"]]}
    assert layout["loss and accuracy"] == {"loss: train vs validation":
                                           ["Multiline", ["^train/loss$", "^val/loss$", "^val_ood/loss$"]]}
    assert list(layout["rewards (β·log π/π_ref)"]) == ["rewards: chosen vs rejected", "rewards/accuracy"]
    assert layout["rewards (β·log π/π_ref)"]["rewards: chosen vs rejected"][1] == [
        "^train/rewards/chosen$", "^train/rewards/rejected$", "^val/rewards/chosen$", "^val/rewards/rejected$"]
    assert layout["optimization"] == {"lr": ["Multiline", ["^train/lr$"]]}
    assert not any("probe" in t for charts in layout.values() for chart in charts.values() for t in chart[1])
    assert flat_config({"model": {"init_args": {"beta": 0.1, "layers": [1, 2]}}, "seed": None}) == {
        "model.init_args.beta": 0.1, "model.init_args.layers": "[1, 2]", "seed": "None"}


def test_a_dpo_run_writes_the_layout_the_config_and_one_lr_curve(tmp_path, monkeypatch):
    run_in_process(DPO, tmp_path, monkeypatch)
    ea = _events(tmp_path / "logs" / "tb" / "version_0")
    scalars = set(ea.Tags()["scalars"])
    assert not any(t.endswith("epoch") for t in scalars)
    assert "train/lr" in scalars and not any(t.startswith("lr-") for t in scalars)
    layout = _layout(ea)
    assert layout["loss and accuracy"]["loss: train vs validation"] == ["^train/loss$", "^val/loss$",
                                                                        "^val_ood/loss$"]
    rewards = layout["rewards (β·log π/π_ref)"]
    assert list(rewards) == ["rewards: chosen vs rejected", "rewards/margins", "rewards/accuracy"]
    assert "^val_ood/rewards/accuracy$" in rewards["rewards/accuracy"]
    assert list(layout["log-probs (policy)"]) == ["logps: chosen vs rejected", "logps/margins", "logps/accuracy"]
    for charts in layout.values():  # every chart shows tags that the run logged
        for chart in charts.values():
            assert all(t.strip("^$").replace("\\", "") in scalars for t in chart), chart
    config = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "class_path: lit_align.objectives.DPO" in config and "beta: 0.1" in config
    hparams = ea.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    assert b"model.init_args.beta" in hparams and b"data.init_args.batch_size" in hparams
    assert b"checkpoint." not in hparams

    # an evaluation of the checkpoint logs under its own name, not as the next training version
    ckpt = tmp_path / "logs" / "tb" / "checkpoints" / "last.ckpt"
    for _ in range(2):
        run_in_process(["validate", *DPO[1:], "--ckpt_path", str(ckpt)], tmp_path, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "logs" / "tb").iterdir()) == [
        "checkpoints", "validate_0", "validate_1", "version_0"]


def test_progress_lines_without_a_terminal(tmp_path):
    """stdout a pipe (CI, nohup, SLURM logs): a plain line per few steps and per validation, no rich bar, and
    none of the messages that say nothing (the litlogger tip, eval-mode modules, v_num, ...); the model summary and
    a warning (here the sample generations' share of the run) are one line each, not a table or an echoed source
    line."""
    out = run_cli([*DPO, "--trainer.max_steps", "6", "--trainer.enable_model_summary", "true",
                   "--trainer.callbacks.warn_fraction", "0"], cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-3000:]
    both = out.stdout + out.stderr
    assert "Total FLOPs" not in both and "┃" not in both and "Trainable params" not in both, both
    assert re.search(r"^model: 250 K parameters \(125 K trainable, [\d.]+ MB\)$", out.stderr, re.M), out.stderr
    warning = [line for line in out.stderr.splitlines() if "sample generations took" in line]
    assert len(warning) == 1 and re.fullmatch(r"lit_align: warning: sample generations took \d+% of the run; .* "
                                              r"\(UserWarning\)", warning[0]), out.stderr
    assert "rank_zero_warn(" not in out.stderr and "UserWarning: " not in out.stderr
    steps = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"], out.stdout
    assert all(" it/s " in s and "ETA " in s and "train/loss " in s for s in steps)
    validations = [line for line in out.stdout.splitlines() if line.startswith("validation at step")]
    assert [v.split()[3] for v in validations] == ["2:", "4:", "6:"]
    assert all("val/loss " in v and "val_ood/rewards/accuracy " in v for v in validations)
    for noise in ("litlogger", "LeafSpec", "in eval mode", "exists and is not empty", "v_num", "━━",
                  "Writing model shards"):
        assert noise not in out.stdout + out.stderr, noise


def test_online_rl_metrics_get_their_own_categories_and_the_reward_is_charted_once():
    from lit_align.callbacks.tensorboard import layout_for

    layout = layout_for({"train/loss", "train/reward", "val/reward", "train/reward/exact", "train/reward/close",
                         "train/rollout/entropy", "train/policy/kl", "train/lr"})
    charts = {category: set(c) for category, c in layout.items()}
    assert "reward" in charts["loss and accuracy"]
    assert charts["rewards per function (online RL)"] == {"reward/exact", "reward/close"}
    assert charts["rollouts (online RL)"] == {"rollout/entropy"} and charts["policy update (online RL)"] == {"policy/kl"}
    assert charts["optimization"] == {"lr"}
