"""Sweeps: a tiny grid runs through the real CLI and writes a CSV with one row per run and a PNG; a run
that is done is not run again; the SLURM array script is generated (without SLURM); every sweep file
in configs/sweeps resolves to configs that LitAlignCLI accepts; a sweep file with an unknown key or a value of
the wrong type is refused in one sentence."""

import csv
import json

import pytest
import yaml
from conftest import REPO

from lit_align.errors import LitAlignError

SWEEPS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "sweeps").glob("*.yaml"))

TINY = {
    "name": "tiny",
    "sizes": [8, 16],
    "seeds": [0],
    "epochs": 1,
    "min_steps": 2,
    "metrics": ["val_id/logps/accuracy", "val_ood/logps/accuracy"],
    "base": {
        "data": {"class_path": "lit_align.data.AlignDataModule", "init_args": {
            "train": {"path": "builtin:ab"}, "batch_size": 8, "max_length": 64,
            "val": {"id": {"path": "builtin:ab", "split": "id", "limit": 8, "kind": "pair"},
                    "ood": {"path": "builtin:ab", "split": "ood", "limit": 8, "kind": "pair"}}}},
        "trainer": {"accelerator": "cpu", "log_every_n_steps": 1},
    },
    "objectives": {"sft": {"model": {"class_path": "lit_align.objectives.SFT",
                                     "init_args": {"policy": {"name": "builtin:tiny"}}}}},
    "slurm": {"time": "00:10:00", "gres": "gpu:1", "max_parallel": 4, "setup": "source .venv/bin/activate"},
}


def _write(tmp_path, spec) -> "Path":  # noqa: F821
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**spec, "out": str(tmp_path / "out")}))
    return path


def test_tiny_sweep_writes_one_csv_row_per_run_and_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from lit_align.sweep.command import main

    path = _write(tmp_path, TINY)
    main(["run", str(path)])
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == ["sft-n16-s0", "sft-n8-s0"]
    for r in rows:
        assert int(r["train_examples"]) == int(r["size"]) and int(r["steps"]) == 2
        assert 0.0 <= float(r["val_id/logps/accuracy"]) <= 1.0 and r["val_ood/logps/accuracy"] != ""
    assert (tmp_path / "out" / "tiny.png").stat().st_size > 10_000
    run_dir = tmp_path / "out" / "runs" / "sft-n8-s0"
    assert json.loads((run_dir / "result.json").read_text())["seed"] == 0
    assert list((run_dir / "version_0").glob("events.out.tfevents.*"))
    # a second invocation finds every run done and only collects
    capsys.readouterr()
    main(["run", str(path)])
    assert capsys.readouterr().out.count("done already") == 2


def test_run_configs_set_size_seed_and_steps(tmp_path):
    from lit_align.sweep.engine import Sweep

    sweep = Sweep(_write(tmp_path, {**TINY, "sizes": [100], "seeds": [3], "epochs": 2, "min_steps": 5}))
    (run,) = sweep.runs
    cfg = sweep.config(run)
    assert cfg["data"]["init_args"]["train"] == {"path": "builtin:ab", "limit": 100}
    assert cfg["data"]["init_args"]["seed"] == 3 and cfg["seed_everything"] == 3
    assert cfg["trainer"]["max_steps"] == 25  # ceil(2 epochs * 100 / batch 8)
    assert cfg["export"]["enabled"] is False
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "sft-n100-s3"


def test_an_online_method_is_budgeted_in_reward_queries(tmp_path):
    """`budget: reward_queries`: an online method's size is its labels, so GRPO with 4 completions per prompt gets
    size / 4 prompts, each used once; offline methods keep training examples; both get a `labels` column, the
    figure's axis, in one CSV."""
    from lit_align.sweep.engine import Sweep

    grpo = {"budget": "reward_queries", "model": {"class_path": "lit_align.objectives.GRPO", "init_args": {
        "policy": {"name": "builtin:tiny"}, "rewards": ["ab_letter"], "num_generations": 4, "max_new_tokens": 4}}}
    spec = {**TINY, "sizes": [32], "objectives": {**TINY["objectives"], "grpo": grpo}}
    sweep = Sweep(_write(tmp_path, spec))
    online = next(r for r in sweep.runs if r.objective == "grpo")
    cfg = sweep.config(online)
    assert cfg["data"]["init_args"]["train"]["limit"] == 8 and cfg["trainer"]["max_steps"] == 1  # 32 / 4 prompts
    rows = [sweep.run_one(r) for r in sweep.runs]
    by = {r["objective"]: r for r in rows}
    assert by["grpo"]["labels"] == 32 and by["grpo"]["train_examples"] == 8
    assert by["sft"]["labels"] == by["sft"]["train_examples"] == 32
    assert 0.0 <= by["grpo"]["val_id/logps/accuracy"] <= 1.0    # the same evaluation sets as the offline method
    with pytest.raises(LitAlignError, match="objective grpo: option budget: must be one of examples, reward_queries"):
        Sweep(_write(tmp_path, {**spec, "objectives": {"grpo": {**grpo, "budget": "steps"}}}))


def test_a_noise_axis_names_its_runs_and_flips_the_training_labels_only(tmp_path):
    """`noise: [0.0, 0.5]`: noise-0 runs keep their names (finished runs are reused), the others end in -noise<f> and
    come after them (the array indices of the noise-0 runs stay); a run's noise flips its training pairs, seeded by
    the run's seed, never an evaluation set; an online method's rewards instead."""
    from lit_align.sweep.engine import Sweep

    grpo = {"budget": "reward_queries", "model": {"class_path": "lit_align.objectives.GRPO", "init_args": {
        "policy": {"name": "builtin:tiny"}, "rewards": ["ab_letter"], "num_generations": 4, "max_new_tokens": 4}}}
    spec = {**TINY, "sizes": [8], "seeds": [0, 1], "noise": [0.0, 0.5], "objectives": {**TINY["objectives"],
                                                                                        "grpo": grpo}}
    sweep = Sweep(_write(tmp_path, spec))
    assert [r.name for r in sweep.runs] == ["grpo-n8-s0", "grpo-n8-s1", "sft-n8-s0", "sft-n8-s1", "grpo-n8-s0-noise0.5",
                                            "grpo-n8-s1-noise0.5", "sft-n8-s0-noise0.5", "sft-n8-s1-noise0.5"]
    configs = {r.name: sweep.config(r) for r in sweep.runs}
    data = {name: cfg["data"]["init_args"] for name, cfg in configs.items()}
    assert "label_noise" not in data["sft-n8-s1"]["train"]
    assert data["sft-n8-s1-noise0.5"]["train"] == {"path": "builtin:ab", "limit": 8,
                                                   "label_noise": {"fraction": 0.5, "seed": 1}}
    assert all(d["val"] == TINY["base"]["data"]["init_args"]["val"] for d in data.values())   # never noisy
    assert "label_noise" not in data["grpo-n8-s1-noise0.5"]["train"]
    assert configs["grpo-n8-s1-noise0.5"]["model"]["init_args"]["label_noise"] == {"fraction": 0.5, "seed": 1}
    assert "label_noise" not in configs["grpo-n8-s1"]["model"]["init_args"]
    assert "#   4: grpo-n8-s0-noise0.5" in sweep.slurm_script(python="python", workdir="/project")


def test_results_and_the_figure_carry_the_noise_level(tmp_path):
    pytest.importorskip("matplotlib")
    from lit_align.sweep.command import main

    main(["run", str(_write(tmp_path, {**TINY, "sizes": [8], "noise": [0.0, 0.5]}))])
    with open(tmp_path / "out" / "results.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values())))[:6] == ["run", "objective", "size", "seed", "noise", "flipped"]
    assert [(float(r["noise"]), int(r["flipped"])) for r in (rows["sft-n8-s0"], rows["sft-n8-s0-noise0.5"])] == \
        [(0.0, 0), (0.5, 4)]                                       # round(0.5 · 8) of the training pairs
    assert (tmp_path / "out" / "tiny.png").stat().st_size > 10_000     # (one column of panels per noise level)


def test_slurm_array_script(tmp_path):
    from lit_align.sweep.engine import Sweep

    sweep = Sweep(_write(tmp_path, {**TINY, "seeds": [0, 1]}))
    sbatch, submit = sweep.write_slurm(python="/env/bin/python", workdir="/project")
    script = sbatch.read_text()
    assert script.startswith("#!/bin/bash\n")
    assert "#SBATCH --array=0-3%4" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --time=00:10:00" in script and "cd /project" in script
    assert "source .venv/bin/activate" in script
    assert f'srun /env/bin/python -m lit_align.sweep run {sweep.path} --index "$SLURM_ARRAY_TASK_ID"' in script
    for i, name in enumerate(["sft-n8-s0", "sft-n8-s1", "sft-n16-s0", "sft-n16-s1"]):
        assert f"#   {i}: {name}" in script
    text = submit.read_text()
    assert "sbatch --parsable" in text and "--dependency=afterany:$job" in text and "lit_align.sweep collect" in text


def test_a_sweeps_overrides_reach_its_slurm_tasks_and_subprocesses(tmp_path):
    """A sweep read with overrides (the organism experiment's --quick, --out, --policy) hands them to the processes
    it starts: array task i runs the overridden sweep's run i, not the file's (whose run i is another run)."""
    import shlex
    import subprocess
    import sys

    from lit_align.sweep.engine import Sweep

    path = _write(tmp_path, {**TINY, "seeds": [0, 1, 2]})
    sweep = Sweep(path, {"sizes": [16], "seeds": [2], "noise": [0.0, 0.2], "out": str(tmp_path / "quick")})
    sbatch, submit = sweep.write_slurm(python=sys.executable, workdir=str(REPO))
    task = next(line for line in sbatch.read_text().splitlines() if line.startswith("srun "))
    assert "#SBATCH --array=0-1" in sbatch.read_text() and "--overrides" in task and "--overrides" in submit.read_text()
    assert "#   1: sft-n16-s2-noise0.2" in sbatch.read_text()
    argv = shlex.split(task.replace('"$SLURM_ARRAY_TASK_ID"', "0"))[1:]          # as the array task would run it
    listed = subprocess.run([*argv[:3], "list", *argv[4:-2]], capture_output=True, text=True, check=True).stdout
    assert listed.split() == ["0", "sft-n16-s2", "1", "sft-n16-s2-noise0.2"]     # the overridden sweep's runs
    assert Sweep(path).runs[0].name == "sft-n8-s0"                                # (the file's own run 0)


@pytest.mark.parametrize("change, said", [
    ({"sizes": "many"}, "option sizes: Expected a list"),
    ({"slurm": {"time": 5, "bogus": 1}}, "option slurm.time: Expected a str"),
    ({"slurm": {"bogus": 1}}, "'slurm' does not accept option 'bogus'"),
    ({"generate": {"max_new_tokens": "many"}}, "option generate.max_new_tokens: Expected a int"),
    ({"objectives": {"sft": {"caa": "maybe"}}}, "objective sft: option caa: Expected a bool"),
    ({"bogus": 1}, "unknown sweep keys bogus (known: base, config, "),
    ({"objectives": {}}, "`objectives` is missing or empty"),
    ({"sizes": None}, "`sizes` is missing or empty"),
    ({"steer": {"positions": "sideways"}}, "steer.positions"),
    ({"steer": {"select": None}, "objectives": {"caa": {"caa": True}}}, "steer.select: give the held-out"),
    ({"noise": [0.0, 1.5]}, "`noise` must list distinct shares of labels flipped in [0, 1], not [0.0, 1.5]"),
])
def test_a_wrong_sweep_file_is_refused_in_one_sentence_naming_the_file_and_key(tmp_path, change, said):
    from lit_align.sweep.engine import Sweep

    path = _write(tmp_path, {**TINY, **change})
    with pytest.raises(LitAlignError) as refused:
        Sweep(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and said in message and "\n" not in message
    with pytest.raises(LitAlignError, match="option seeds: "):   # overrides are checked as the file is
        Sweep(_write(tmp_path, TINY), {"seeds": "all"})


def test_overrides_replace_top_level_keys(tmp_path):
    from lit_align.sweep.engine import Sweep

    sweep = Sweep(_write(tmp_path, TINY), {"sizes": [4], "seeds": [1, 2], "out": str(tmp_path / "elsewhere")})
    assert [r.name for r in sweep.runs] == ["sft-n4-s1", "sft-n4-s2"]
    assert sweep.out == tmp_path / "elsewhere" and sweep.spec.slurm.max_parallel == 4


SHIPPED = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")
                 if {"objectives", "sizes"} <= set(yaml.safe_load(p.read_text()) or {}))


def test_every_shipped_sweep_file_parses():
    """Every sweep file in configs/ (a YAML with `objectives` and `sizes`) reads as a SweepSpec unchanged."""
    from lit_align.sweep.engine import Sweep

    assert set(SWEEPS) <= set(SHIPPED)
    for sweep_file in SHIPPED:
        sweep = Sweep(REPO / sweep_file)
        assert sweep.runs and set(sweep.methods) == set(sweep.objectives), sweep_file


@pytest.mark.parametrize("sweep_file", SWEEPS)
def test_every_sweep_config_resolves_and_parses(sweep_file, tmp_path, capsys):
    from lit_align.cli import LitAlignCLI
    from lit_align.sweep.engine import Sweep

    sweep = Sweep(REPO / sweep_file)
    seen = set()
    for run in sweep.runs:
        if run.objective in seen:
            continue
        seen.add(run.objective)
        cfg = sweep.config(run)
        path = tmp_path / f"{run.objective}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with pytest.raises(SystemExit) as exit_info:
            LitAlignCLI(args=["fit", "--config", str(path), "--print_config"])
        assert exit_info.value.code in (0, None), (sweep_file, run.objective)
        assert "class_path: lit_align.objectives" in capsys.readouterr().out


def test_runs_side_by_side_give_the_numbers_of_runs_in_turn_and_name_a_failed_run(tmp_path, capsys):
    """`run --jobs 2`: each run in its own process (1 thread each on 2 cores), two at a time; the same metrics as
    the in-process run to float precision, a finished run skipped, and a failing run named with its log once the
    others have ended."""
    from lit_align.sweep.command import main

    spec = {**TINY, "sizes": [8], "objectives": {
        **TINY["objectives"],
        "dpo": {"model": {"class_path": "lit_align.objectives.DPO", "init_args": {"policy": {"name": "builtin:tiny"}}}},
        "broken": {"model": {"class_path": "lit_align.objectives.SFT", "init_args": {"no_such_option": 1}}}}}
    in_turn = json.loads(
        next(line for line in _run_index(tmp_path / "a", {**TINY, "sizes": [8]}, 0, capsys).splitlines()
             if line.startswith("{")))
    (tmp_path / "b").mkdir()
    path = _write(tmp_path / "b", spec)
    with pytest.raises(SystemExit):
        main(["run", str(path), "--jobs", "2"])
    said = capsys.readouterr()
    assert "1 run failed: out/broken-n8-s0" in said.err and "broken-n8-s0/log.txt" in said.err
    side = json.loads((tmp_path / "b" / "out" / "runs" / "sft-n8-s0" / "result.json").read_text())
    assert (tmp_path / "b" / "out" / "runs" / "dpo-n8-s0" / "result.json").exists()
    for key in ("val_id/logps/accuracy", "val_id/logps/margins", "val_ood/logps/margins", "train_examples"):
        assert side[key] == pytest.approx(in_turn[key], abs=1e-5), key
    with pytest.raises(SystemExit):
        main(["run", str(path), "--jobs", "2"])
    assert "out/sft-n8-s0: done already" in capsys.readouterr().out


def _run_index(folder, spec, index, capsys) -> str:
    from lit_align.sweep.command import main

    folder.mkdir()
    capsys.readouterr()
    main(["run", str(_write(folder, spec)), "--index", str(index)])
    return capsys.readouterr().out
