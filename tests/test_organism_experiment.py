"""The steering / model-organism experiment end to end (scripts/organism_experiment.py --quick), on a random-init
built-in model so that CI does not pretrain the organism: every method's run, CAA's held-out selection, the
generation-scored open-ended set, the CSV, the figure, the table, and reuse of finished runs."""

import csv
from dataclasses import replace

import yaml
from test_organism import TINY

from experiments import organism
from lit_align.builtin.pretrain import BUILTIN_PRETRAINED


def test_quick_experiment_runs_every_method_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(organism, "QUICK", {"sizes": [8], "seeds": [0]})
    out = tmp_path / "exp"
    organism.main(["--quick", "--policy", "builtin:tiny", "--out", str(out)])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["objective"] for r in rows} == {"start", "caa", "sft", "sft_caa", "iw_sft_loss", "iw_sft_resample",
                                              "dpo", "grpo"}
    for r in rows:
        for key in ("val_id/ab/p_match", "val_ood/ab/p_match", "val_task/logps/accuracy", "val_open/gen/match"):
            assert 0.0 <= float(r[key]) <= 1.0, (r["run"], key)
        assert "val_caa_select/ab/p_match" not in r or r["val_caa_select/ab/p_match"] == ""  # never reported
        assert int(r["labels"]) == 8
        # online RL is budgeted in labels: 8 reward queries are 1 question x 8 samples
        assert int(r["train_examples"]) == (1 if r["objective"] == "grpo" else 8)
    caa = next(r for r in rows if r["objective"] == "caa")
    assert caa["steps"] == "0" and int(float(caa["caa/layer"])) in (0, 1) and float(caa["caa/multiplier"]) in (
        0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    assert float(caa["caa/select_p_match"]) >= 0.0
    assert (out / "organism.png").stat().st_size > 10_000 and {r["build"] for r in rows} == {"builtin:tiny"}
    md = (out / "tiny" / "table.md").read_text()   # the start model's own table (its folder: its runs)
    assert md.count("\n") == 2 + 8 and "| sft_caa | 8 |" in md and "| start (no training) | any |" in md
    start = next(r for r in rows if r["objective"] == "start")
    unsteered = [r for r in rows if r["objective"] == "caa" and float(r["caa/multiplier"]) == 0]
    for r in unsteered:   # CAA at multiplier 0 is the starting model
        assert abs(float(r["val_id/ab/p_match"]) - float(start["val_id/ab/p_match"])) < 1e-6
    capsys.readouterr()
    (out / "results.csv").unlink()
    # everything finished: reused, also by the side-by-side queue (--jobs 2), which then writes the results again
    organism.main(["--quick", "--policy", "builtin:tiny", "--out", str(out), "--jobs", "2"])
    assert capsys.readouterr().out.count("done already") == 6 and (out / "results.csv").exists()


def test_rows_at_several_noise_levels_get_a_table_block_and_a_start_line_each():
    """write_results' table and start rows with a label-noise axis: one block per level (headed), the starting model
    in each; rows without a noise key (written before the axis) are noise 0, whose lone table is as before."""
    rows = [{"objective": "dpo", "size": 8, "seed": s, "noise": f, "val_id/ab/p_match": p}
            for f, s, p in [(0.0, 0, 0.8), (0.0, 1, 0.6), (0.2, 0, 0.5), (0.2, 1, 0.3)]]
    rows = organism.with_start(rows, {"val_id/ab/p_match": 0.1})
    assert [(r["run"], r["noise"]) for r in rows[:2]] == [("start-n8", 0.0), ("start-n8-noise0.2", 0.2)]
    md = organism.table(rows, (("val_id/ab/p_match", "ID p_match"),))
    blocks = md.split("**label noise ")[1:]
    assert [b.split("**")[0] for b in blocks] == ["0", "0.2"]
    assert "| dpo | 8 | 0.70 ± 0.10 | 2 |" in blocks[0] and "| dpo | 8 | 0.40 ± 0.10 | 2 |" in blocks[1]
    assert all("| start (no training) | any | 0.10 | 1 |" in b for b in blocks)
    assert "the labels of 20% of the training pairs flipped" in blocks[1]
    old = [{k: v for k, v in r.items() if k != "noise"} for r in rows if r["noise"] == 0.0]
    assert organism.table(old, (("val_id/ab/p_match", "ID p_match"),)).startswith("| method |")


def test_results_over_organism_builds_name_each_build_and_band_over_them(tmp_path, monkeypatch):
    """--builds: every method runs on each build of the organism's recipe (pretraining seeds; here two builds of a
    tiny recipe), each build's runs and table in its own folder, and the CSV, figure and table over builds x seeds:
    a `build` column, the start model of every build, bands over both, each build's weights digest named."""
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(BUILTIN_PRETRAINED, "organism", TINY)
    monkeypatch.setitem(BUILTIN_PRETRAINED, "organism-seed1", replace(TINY, seed=1))
    monkeypatch.setattr(organism, "QUICK", {"sizes": [8], "seeds": [0]})
    spec = yaml.safe_load(organism.CONFIG.read_text())
    spec["objectives"] = {k: spec["objectives"][k] for k in ("sft", "dpo")}   # two methods: the point is the builds
    config = tmp_path / "organism.yaml"
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "exp"
    organism.main(["--quick", "--builds", "0", "1", "--out", str(out), "--config", str(config)])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["build"], r["objective"]) for r in rows) == sorted(
        (b, m) for b in ("builtin:organism", "builtin:organism-seed1") for m in ("start", "sft", "sft_caa", "dpo"))
    starts = [r for r in rows if r["objective"] == "start"]
    assert starts[0]["val_id/ab/p_match"] != starts[1]["val_id/ab/p_match"]   # two builds: two start models
    md = (out / "table.md").read_text()
    assert md.startswith("Means over 2 builds x 1 seed") and "| builds x seeds |" in md
    id_pm = sorted(float(r["val_id/ab/p_match"]) for r in rows if r["objective"] == "sft")
    assert f"| sft | 8 | {sum(id_pm) / 2:.2f} ± {(id_pm[1] - id_pm[0]) / 2:.2f} |" in md
    digests = [line.split("weights sha256 ")[1][:12] for line in md.splitlines() if "weights sha256" in line]
    assert len(set(digests)) == 2
    for build in ("organism", "organism-seed1"):   # each build's own results, to check a finding build by build
        assert "| sft | 8 |" in (out / build / "table.md").read_text() and (out / build / "results.csv").exists()
    assert (out / "organism.png").stat().st_size > 10_000
