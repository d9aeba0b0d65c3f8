"""The markdown tables bench.py prints and writes: speed and memory, memory against vocabulary, prefix sharing, GRPO;
ratios are lit_align / TRL of the same objective."""

from __future__ import annotations

from benchlib.cases import Case


def mfu(case: Case, result: dict, params: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: 6 x parameters per sequence token (forward 2, backward 4; the tied LM head
    counted as a matmul on every token, attention left out), + 2 x parameters for a live reference's
    forward (DPO, prefix-DPO; not a cached one), over the device's peak."""
    per_token = 6 * params + (2 * params if case.objective in ("DPO", "prefix-DPO") else 0)
    return result["tokens_per_s"] * per_token / (peak_tflops * 1e12)


def speed_table(results: list[tuple[Case, dict]], params: int = 0, peak_tflops: float | None = None) -> str:
    trl = {c.objective: r for c, r in results if c.impl == "TRL"}
    lines = ["| objective | implementation | step (ms) | tokens/s | peak memory (MB) | padding | tokens/s vs TRL | "
             "memory vs TRL |" + (" MFU |" if peak_tflops else ""), "|---|---|---:|---:|---:|---:|---:|---:|"
             + ("---:|" if peak_tflops else "")]
    for c, r in results:
        ref = trl.get(c.objective)
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref and c.impl != "TRL" else ""
        mem = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref and c.impl != "TRL" else ""
        name = c.impl + (f" (ref {c.reference})" if c.objective.startswith("DPO") else "")
        lines.append(f"| {c.objective} | {name} | {r['step_s'] * 1e3:.0f} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_mb']:.0f} | {100 * r['padding']:.0f}% | {speed} | {mem} |"
                     + (f" {100 * mfu(c, r, params, peak_tflops):.1f}% |" if peak_tflops else ""))
    return "\n".join(lines)


def memory_table(results: list[tuple[Case, dict]]) -> str:
    lines = ["| vocabulary | implementation | peak memory (MB) | vs TRL | step (ms) |", "|---:|---|---:|---:|---:|"]
    trl = {c.vocab: r for c, r in results if c.impl == "TRL"}
    for c, r in results:
        ref = trl.get(c.vocab)
        ratio = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref and c.impl != "TRL" else ""
        lines.append(f"| {c.vocab} | {c.impl} | {r['peak_mb']:.0f} | {ratio} | {r['step_s'] * 1e3:.0f} |")
    return "\n".join(lines)


def prefix_table(rows: list[dict]) -> str:
    lines = ["| shared prefix : continuation | tokens (context / each continuation) | naive, full head (ms) | "
             "naive (ms) | shared (ms) | speedup vs naive, full head (FLOP ideal) | speedup vs naive (FLOP ideal) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, ideal = r["times"], r["ideal"]
        lines.append(f"| {r['ratio']}:1 | {r['context']} / {r['continuation']} | {t['naive, full head'] * 1e3:.0f} | "
                     f"{t['naive'] * 1e3:.0f} | {t['shared'] * 1e3:.0f} | "
                     f"{t['naive, full head'] / t['shared']:.2f}x ({ideal['naive, full head']:.2f}x) | "
                     f"{t['naive'] / t['shared']:.2f}x ({ideal['naive']:.2f}x) |")
    return "\n".join(lines)


def grpo_table(results: list[tuple[Case, dict]]) -> str:
    """Side by side: step time, samples/s, the sampling part of the step, tokens, memory; ratios lit_align / TRL."""
    trl = {c.objective: r for c, r in results if c.impl == "TRL"}
    lines = ["| objective | implementation | step (ms) | samples/s | of which sampling (ms) | tokens/step | "
             "completion length | peak memory (MB) | samples/s vs TRL | memory vs TRL |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, r in results:
        ref = trl.get(c.objective)
        speed = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref and c.impl != "TRL" else ""
        mem = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref and c.impl != "TRL" else ""
        lines.append(f"| {c.objective} | {c.impl} | {r['step_s'] * 1e3:.0f} | {r['samples_per_s']:.1f} | "
                     f"{r['sampling_s'] * 1e3:.0f} | {r['tokens_per_step']:.0f} | {r['completion_length']:.1f} | "
                     f"{r['peak_mb']:.0f} | {speed} | {mem} |")
    return "\n".join(lines)

