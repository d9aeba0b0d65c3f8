"""scripts/bench.py runs end to end without TRL (CI has no TRL), its GRPO row and table too, and its FLOP model
behaves as it should."""

import subprocess
import sys

import pytest
from conftest import REPO, requires_shared

sys.path.insert(0, str(REPO / "scripts"))
import bench  # noqa: E402


@requires_shared
@pytest.mark.slow
def test_bench_lit_align_rows_run_and_print_tables(tmp_path):
    out = tmp_path / "bench.md"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--trl", "off", "--hidden", "32", "--intermediate", "64",
           "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "1000", "--batch", "2", "--steps", "2",
           "--max-length", "128", "--threads", "1", "--memory-vocabs", "2000", "--prefix-ratios", "1", "4",
           "--continuation", "8", "--prefix-repeats", "1", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = out.read_text()
    for row in ("| SFT | lit_align |", "| DPO | lit_align naive (ref copy) |", "| DPO (cached reference) | lit_align (ref cache) |",
                "| 2000 | lit_align |", "| 4:1 |"):
        assert row in table, table
    assert "| TRL" not in table  # no TRL rows without TRL


def test_flop_ideal_of_prefix_sharing():
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2)
    ideal = [bench.flops(cfg, r * 32, 32, shared=False) / bench.flops(cfg, r * 32, 32, shared=True)
             for r in (0, 1, 4, 16, 256)]
    assert ideal[0] == pytest.approx(1.0)                     # nothing shared: nothing to save
    assert all(a < b for a, b in zip(ideal, ideal[1:]))       # the more is shared, the more it saves
    assert ideal[-1] < 2.0 and ideal[-1] > 1.9                # two continuations: at most 2x


@requires_shared
@pytest.mark.slow
def test_bench_grpo_lit_align_row_runs_without_trl(tmp_path):
    out = tmp_path / "bench.md"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--sections", "grpo", "--trl", "off",
           "--hidden", "32", "--intermediate", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1",
           "--vocab", "1000", "--steps", "1", "--warmup", "0", "--grpo-prompts", "2", "--grpo-generations", "2",
           "--grpo-max-new-tokens", "4", "--max-length", "128", "--threads", "1", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = out.read_text()
    assert "### GRPO vs TRL's GRPOTrainer (2 prompts x 2 completions of up to 4 tokens" in table, table
    assert "| GRPO | lit_align |" in table and "| TRL" not in table, table


def test_grpo_reward_and_table():
    """The reward reads lit_align's text completions and TRL's chat-message ones alike; the table's ratios are
    lit_align / TRL."""
    assert bench.length_reward(["p"] * 2, ["abc", ""], [{}, {}]) == [0.03, 0.0]
    assert bench.length_reward(prompts=[[{"role": "user", "content": "p"}]],
                               completions=[[{"role": "assistant", "content": "abcd"}]], completion_ids=[[1]]) == [0.04]
    row = {"step_s": 0.5, "samples_per_s": 32.0, "sampling_s": 0.3, "tokens_per_step": 900, "completion_length": 16.0,
           "peak_mb": 100.0}
    table = bench.grpo_table([(bench.Case("GRPO", "TRL"), row),
                              (bench.Case("GRPO", "lit_align"), {**row, "samples_per_s": 16.0, "peak_mb": 50.0})])
    assert "| GRPO | TRL | 500 | 32.0 | 300 | 900 | 16.0 | 100 |  |  |" in table, table
    assert "| GRPO | lit_align | 500 | 16.0 | 300 | 900 | 16.0 | 50 | 0.50x | 0.50x |" in table, table
