"""scripts/gpu_check.sh --dry-run (CPU, tiny models) runs every section of the GPU check end to end, so that the
script cannot rot between GPU runs: every section and row is in the report, the rows that can run on CPU have
numbers and pass, the CUDA-only ones say "skipped (no CUDA)", and none failed. Also: the peak-FLOP/s table and the
time limit on a row's child process."""

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench  # noqa: E402
import gpu_check  # noqa: E402


def table_rows(report: str, first_cell: str) -> list[list[str]]:
    """The cells of the markdown table rows whose first cell is `first_cell`."""
    return [r for r in gpu_check.table_cells(report) if r[0] == first_cell]


def number(cell: str) -> float:
    return float(cell.rstrip("%x"))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "report.md"
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out.read_text(), time.monotonic() - start, run.stdout


@pytest.mark.slow
def test_dry_run_reports_every_section_and_row(dry_run):
    report, wall, stdout = dry_run
    for heading in ("# lit_align GPU check", "## 1. Speed", "## 2. Equality", "## 3. Strategies",
                    "## 4. LoRA and QLoRA", "## Time", "DRY RUN", "device: CPU (no CUDA device)"):
        assert heading in report, heading
    assert "[" in stdout and "s] == strategies" in stdout  # progress per section, with elapsed seconds
    for bad in ("failed:", "timed out", "DIFFERS", "still running"):
        assert bad not in report, (bad, report)

    # speed: both models' tables, every row; lit_align rows measured (MFU n/a without a known peak), TRL skipped
    assert report.count("| objective | implementation |") == 2
    for shape in gpu_check.TINY_A, gpu_check.TINY_B:
        assert f"### {shape.name}:" in report
    for r in gpu_check.speed_rows():
        rows = [c for c in table_rows(report, r.case.objective) if c[1:4] == [r.label, gpu_check.row_head(r), r.layout]]
        assert len(rows) == (2 if r.both else 1), gpu_check.row_name(r)
        for cells in rows:
            if r.library == "TRL":
                assert cells[5] == "skipped (no CUDA)", cells
                continue
            step, tokens, peak, _, padding, mfu = cells[5:11]
            assert number(step) > 0 and number(tokens) > 0 and number(peak) > 0 and 0 <= number(padding) < 100, cells
            assert mfu == "n/a", cells

    # equality: the fp32 checks ran and hold; bf16 and flash-attention need CUDA
    expected = {"lm_head targets vs all: SFT loss and gradients": "equal",
                "lm_head targets vs all: DPO loss and gradients": "equal",
                "packed vs padded DPO, sdpa: loss and gradients": "equal",
                "packed vs padded DPO, eager: loss and gradients": "equal",
                "shared-context vs joined prefix-DPO: loss and gradients": "equal",
                "bf16 log-probs against fp32": "skipped (no CUDA)",
                "flash-attention 2 vs sdpa log-probs (bf16)": "skipped (no CUDA)"}
    for check, result in expected.items():
        (cells,) = table_rows(report, check)
        assert cells[-1] == result, cells
        if result == "equal":
            assert "loss " in cells[1] and "gradients" in cells[1], cells

    # strategies: no strategy and FSDP2 (CPU, gloo) ran and agree; FSDP1 and DeepSpeed need CUDA
    for name in ("none (one device)", "FSDP2 (ModelParallelStrategy)"):
        (cells,) = table_rows(report, name)
        assert cells[1] == "allowed" and len(cells[2].split()) == 3 and cells[-1] == "equal", cells
    (fsdp1,) = table_rows(report, "FSDP1 (FSDPStrategy)")
    (deepspeed,) = table_rows(report, "DeepSpeed ZeRO-2")
    assert fsdp1[2] == "skipped (no CUDA)" and deepspeed[2] == "skipped (no CUDA)"
    assert deepspeed[1] == "refused by lit_align (normalisation unverified)"
    assert "Sensitivity: the same run with lr x 2" in report

    # LoRA ran, exported and reloaded to the same logits; QLoRA needs CUDA
    lora = [r for r in table_rows(report, "LoRA r 16, fp32 (no quantization)")]
    assert len(lora) == 1 and lora[0][1] == "2" and "adapter_config.json" in lora[0][3] and lora[0][-1] == "equal"
    assert any(r[1] == "skipped (no CUDA)" for line in report.splitlines() if line.startswith("| QLoRA")
               for r in [[c.strip() for c in line.split("|")[1:-1]]])
    assert "| total (from the start of gpu_check.py) |" in report
    print(f"dry run: {wall:.1f} s")


@pytest.mark.slow
def test_a_broken_equality_fails_the_run_and_names_the_row(tmp_path):
    """--perturb moves one fp32 row's compared loss by 1%: the row says DIFFERS and the run exits 1 naming it (the
    script had printed DIFFERS and exited 0)."""
    row = "packed vs padded DPO, sdpa: loss and gradients"
    out = tmp_path / "report.md"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry-run", "--sections", "equality",
                          "--perturb", row, "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"gpu_check: FAILED: 1 row(s) DIFFER: {row}" in run.stderr
    report = out.read_text()
    assert gpu_check.differing_rows(report) == [row]
    (cells,) = table_rows(report, row)
    assert cells[-1] == "DIFFERS" and "relative Δ 1.0e-02" in cells[1], cells


def test_peak_flops_by_device_name():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.peak_tflops("NVIDIA A10") == 125
    assert gpu_check.peak_tflops("NVIDIA L40S") == 362
    assert gpu_check.peak_tflops("NVIDIA L4") == 121
    assert gpu_check.peak_tflops("Tesla T4") is None  # not in the table: MFU "n/a"


def test_a_row_that_hangs_or_dies_is_reported_not_waited_for():
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        bench.in_fresh_process(time.sleep, 1, 60, timeout=1)
    with pytest.raises(RuntimeError, match="died"):
        bench.in_fresh_process(os._exit, 1, 3)
    assert time.monotonic() - start < 20
