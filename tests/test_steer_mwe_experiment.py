"""CAA's experiment on model-written evals (scripts/steer_mwe_experiment.py --quick), on a random-init built-in model
so that CI needs neither the real model nor time: every behaviour's steer outputs, the combined CSVs, the table at
each behaviour's best layer (the highest ID steerability), the figure, and reuse of finished behaviours."""

import csv

from conftest import requires_shared

from experiments import steer_mwe


@requires_shared
def test_quick_experiment_sweeps_each_behaviour_and_reuses_finished_ones(tmp_path, capsys):
    out = tmp_path / "mwe"
    steer_mwe.main(["--quick", "--policy", "builtin:tiny", "--out", str(out)])
    rows = list(csv.DictReader(open(out / "results.csv")))
    behaviours = steer_mwe.QUICK["behaviours"]
    assert {r["behaviour"] for r in rows} == set(behaviours) and {r["set"] for r in rows} == {"lm", "human"}
    assert len(rows) == len(behaviours) * 2 * 2 * 3                      # behaviours x sets x layers x multipliers
    assert all(0 <= float(r["p_match"]) <= 1 and r["n"] == "8" for r in rows)
    summary = list(csv.DictReader(open(out / "summary.csv")))
    best = steer_mwe.best_layers(summary)
    for b in behaviours:                                                 # the best layer: the highest ID slope
        slopes = {r["layer"]: float(r["steerability"]) for r in summary if r["behaviour"] == b and r["set"] == "lm"}
        assert slopes[best[b]] == max(slopes.values())
    md = (out / "table.md").read_text()
    assert md.count("\n") == 2 + 2 * len(behaviours) and f"| {behaviours[0]} | {best[behaviours[0]]} | OOD |" in md
    assert (out / "steer_mwe.png").stat().st_size > 10_000
    capsys.readouterr()
    steer_mwe.main(["--quick", "--policy", "builtin:tiny", "--out", str(out)])   # finished: reused, not rerun
    assert capsys.readouterr().out.count("done already") == len(behaviours)
