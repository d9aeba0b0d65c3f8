"""The command line as a user runs it: fit writes TensorBoard events, checkpoints and a Hugging Face model;
`--ckpt_path last` resumes; every config parses."""

import glob
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_cli

# configs/sweeps/ holds sweep files (lit_align.sweep), not LightningCLI configs: tests/test_sweep.py parses them;
# configs with a `steer:` section are for `lit_align steer`: tests/test_steering.py parses them
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")
                 if "sweeps" not in p.parts and "steer" not in (yaml.safe_load(p.read_text()) or {}))
TINY = ["--model.init_args.policy.name", "builtin:tiny", "--model.init_args.optim.schedule", "constant",
        "--data.init_args.train.limit", "64",
        "--data.init_args.val.val.limit", "16", "--data.init_args.batch_size", "4",
        "--trainer.val_check_interval", "3", "--trainer.logger.init_args.name", "cli_test"]


def _scalars(version_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(glob.glob(str(version_dir / "events.out.tfevents.*"))[0])
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_fit_then_resume_then_reload(tmp_path):
    config = str(REPO / "configs" / "quickstart.yaml")
    first = run_cli(["fit", "--config", config, *TINY, "--trainer.max_steps", "6",
                     "--trainer.log_every_n_steps", "1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "logs" / "cli_test"
    assert "TensorBoard logs: logs/cli_test/version_0" in first.stdout
    scalars = _scalars(run / "version_0")
    assert {"train/loss", "train/token_accuracy", "val/loss", "val/token_accuracy"} <= scalars.keys()
    assert [s for s, _ in scalars["train/loss"]] == list(range(6))
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 6

    # the exported model reloads with plain transformers and gives the checkpoint's logits
    from transformers import AutoModelForCausalLM

    from lit_align.objectives import SFT

    hf = AutoModelForCausalLM.from_pretrained(run / "version_0" / "hf_model")
    trained = SFT.load_from_checkpoint(ckpt, map_location="cpu")
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, trained.model(ids).logits, atol=1e-6)

    second = run_cli(["fit", "--config", config, *TINY, "--trainer.max_steps", "10",
                      "--trainer.log_every_n_steps", "1", "--ckpt_path", "last"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert torch.load(ckpt, weights_only=False)["global_step"] == 10
    resumed = _scalars(run / "version_1")
    assert [s for s, _ in resumed["train/loss"]] == list(range(6, 10))  # the step count continues


def test_evaluating_a_checkpoint_uses_its_run_folder_and_data(tmp_path, monkeypatch, capsys):
    """`validate` / `predict --ckpt_path` without --config: they log beside the checkpoint's run (not under
    logs/default/, no "dirpath has changed" warning), validate the run's own validation set (its data settings are
    stored in the checkpoint), and say where they logged."""
    import warnings

    from lit_align.cli import main

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), *TINY, "--trainer.max_steps", "3",
          "--export.enabled", "false", "--trainer.enable_model_summary", "false"])
    capsys.readouterr()
    ckpt = str(Path("logs", "cli_test", "checkpoints", "last.ckpt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["validate", "--ckpt_path", ckpt])
        out = capsys.readouterr()
        assert f"TensorBoard logs: {Path('logs', 'cli_test', 'validate_0')}" in out.out
        assert "validation of the checkpoint: val/loss" in out.out  # builtin:sft's val split, as in the run
        main(["predict", "--ckpt_path", ckpt, "--data.init_args.predict", "{path: builtin:sft, split: val, limit: 3}"])
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["cli_test"]
    rows = (tmp_path / "logs" / "cli_test" / "predict_0" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 3


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses(config, capsys):
    from lit_align.cli import LitAlignCLI

    with pytest.raises(SystemExit) as exit_info:
        LitAlignCLI(args=["fit", "--config", str(REPO / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: lit_align.objectives" in printed and "class_path: lit_align.data" in printed
