"""The method comparison on model-written evals (scripts/smollm2_methods_experiment.py --quick), on a random-init
built-in model so that CI needs neither the real model nor its time: every method's run on one behaviour's data, the
start model, the capability columns, IW-SFT's weights, the table; and the SLURM arrays of the full grid, whose tasks
get each behaviour's data (an override of `base`)."""

import csv
import json
import shlex

import pytest
import yaml
from conftest import REPO, requires_shared

from experiments import smollm2_methods


@requires_shared
def test_quick_comparison_runs_every_method_with_the_capability_check(tmp_path):
    out = tmp_path / "mwe"
    smollm2_methods.main(["--quick", "--policy", "builtin:tiny", "--layers", "0", "1", "--out", str(out), "--jobs", "1"])
    folder = out / "survival-instinct"
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert {r["objective"] for r in rows} == {"start", "caa", "sft", "sft_caa", "iw_sft_loss", "iw_sft_resample", "dpo"}
    for r in rows:
        assert 0 <= float(r["val_id/ab/p_match"]) <= 1 and 0 <= float(r["val_ood/ab/p_match"]) <= 1, r["run"]
        assert float(r["val_chat/logps/chosen"]) < 0 and 0 <= float(r["val_general/gen/substring"]) <= 1, r["run"]
    config = yaml.safe_load(open(folder / "runs" / "sft-n16-s0" / "config.yaml"))
    assert config["data"]["init_args"]["train"]["path"].endswith("lm/survival-instinct.jsonl")
    assert config["model"]["init_args"]["policy"] == {"name": "builtin:tiny", "lora": {"r": 16, "alpha": 32,
                                                                                       "target_modules": "all-linear"}}
    weights = json.loads((folder / "weights.json").read_text())
    assert weights["n"] == 16 and 0 < weights["unclipped"]["ess_share"] <= 1 <= weights["unclipped"]["max_over_mean"]
    # the start model's letter bias on the A/B sets: the letters as the files put them, p_match split by letter
    letters = json.loads((folder / "letter_bias.json").read_text())
    lm = [json.loads(line) for line in open(REPO / "../shared/data/model-written-evals/lm/survival-instinct.jsonl")]
    assert set(letters) == {"id", "ood"}
    assert abs(letters["id"]["a_share"] - sum(r["answer_matching_behavior"] == " (A)" for r in lm[:40]) / 40) < 1e-6
    for s in letters.values():
        share, a, b = s["a_share"], s["p_match_a_matching"], s["p_match_b_matching"]
        assert abs(s["p_match"] - (share * a + (1 - share) * b)) < 1e-5
        assert abs(s["mean_p_a"] - (share * a + (1 - share) * (1 - b))) < 1e-5
    md = (folder / "table.md").read_text()
    assert md.startswith("survival-instinct\n") and "| start (no training) | any |" in md and "ess_share" in md
    assert "letter bias" in md


def test_the_full_grid_on_slurm_gives_each_behaviour_its_data(tmp_path):
    out = tmp_path / "grid"
    smollm2_methods.main(["--slurm", "--seeds", "0", "1", "2", "--out", str(out)])
    for behaviour in smollm2_methods.BEHAVIOURS:
        script = (out / behaviour / "sweep.sbatch").read_text()
        assert "#SBATCH --array=0-44" in script                          # 5 methods x 3 sizes x 3 seeds
        task = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
        overrides = json.loads(task[task.index("--overrides") + 1])
        assert overrides["seeds"] == [0, 1, 2] and overrides["out"] == str(out / behaviour)
        assert overrides["base"]["data"]["init_args"]["val"]["ood"]["path"].endswith(f"human/{behaviour}.jsonl")
        assert overrides["steer"]["select"]["path"].endswith(f"lm/{behaviour}.jsonl")


def test_more_seeds_of_one_cell_run_only_that_method(tmp_path, capsys):
    out = tmp_path / "dpo"
    smollm2_methods.main(["--slurm", "--methods", "dpo", "--sizes", "256", "--seeds", "1", "2",
                          "--behaviours", "power-seeking-inclination", "--out", str(out)])
    script = (out / "power-seeking-inclination" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script                                 # dpo at n = 256, seeds 1 and 2
    task = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert list(json.loads(task[task.index("--overrides") + 1])["objectives"]) == ["dpo"]
    with pytest.raises(SystemExit):
        smollm2_methods.main(["--slurm", "--methods", "dpo", "ppo", "--out", str(out)])
    assert "--methods: ppo not in" in capsys.readouterr().err
