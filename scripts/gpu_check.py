"""The GPU check (issue 14): one command on one CUDA GPU writes a markdown report of lit_align's speed, its
equalities on CUDA, its strategies on one GPU and QLoRA, with TRL beside it, in under 8 minutes on an H200.

    bash scripts/gpu_check.sh                           # sets up .venv (bench extra + best-effort extras), runs this
    .venv/bin/python scripts/gpu_check.py --out gpu_check_report.md
    .venv/bin/python scripts/gpu_check.py --dry-run     # CPU, tiny models, fp32, seconds; CUDA-only rows skipped

No download: models are built from configs with random init (a Qwen2-0.5B-shaped and a Qwen2-1.5B-shaped one;
the built-in byte-level tokenizer) and the data is synthetic text of chosen lengths. Sections, each independent
(every row runs in a forked child process, with a time limit; a failure is recorded as the error's last line and
the rest still runs; a section's time budget caps its rows, and what is left when it is spent is marked skipped):

    speed       bf16-mixed train steps of SFT, IW-SFT, DPO (reference copy, reference cache), prefix-DPO:
                tokens/s, peak memory, MFU; lm_head targets vs all, packed vs padded, shared context vs joined;
                TRL's SFTTrainer / DPOTrainer (its fused Triton LM head on CUDA; Liger kernels if installed) in the
                same table. Rows are scripts/bench.py's (same measuring, same TRL settings).
    equality    on the device, fp32: lm_head targets vs all (losses, gradients), packed vs padded DPO (sdpa, eager),
                shared-context vs joined prefix-DPO; bf16 autocast log-probs against fp32; flash-attention vs sdpa
    strategies  one device: FSDP2 (ModelParallelStrategy), FSDP1, DeepSpeed ZeRO-2: batch 8 equals batch 4 x
                accumulation 2, step by step (SFT, whose per-step token counts vary)
    lora        LoRA and QLoRA (4-bit NF4, bitsandbytes): a few steps, the adapter exported at the end of fit
                (lit_align's ExportHF), reloaded with peft, and the reloaded model's logits against the trained one's

`--dry-run` runs every section's code on CPU with tiny sizes in fp32, a step or two per row, and reports the
CUDA-only rows (bf16, FSDP1, DeepSpeed, QLoRA, flash-attention, TRL) as skipped; tests/test_gpu_check.py runs it.

The exit status is 1 when any row's result is DIFFERS (an equality, a strategy, the LoRA reload), and the rows are
named on stderr: a report that says DIFFERS must not pass for a green run. `--dry-run --perturb NAME` moves the
second run's loss of the fp32 equality row NAME by 1% before the comparison, so that CI proves a difference fails.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import itertools
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

# The parent never touches CUDA (its forked children could not use it then): NVML answers is_available().
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (sets the offline / quiet environment, imports torch)
import torch  # noqa: E402

# -- what the check runs on -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A model built from a config with random init (bench.save_model), tied embeddings, the built-in tokenizer."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    arch: str = "qwen2"


# Qwen2-0.5B's and Qwen2-1.5B's shapes (hidden, intermediate, layers, heads, kv heads, vocabulary).
QWEN2_05B = Shape("Qwen2-0.5B-shaped", 896, 4864, 24, 14, 2, 151936)
QWEN2_15B = Shape("Qwen2-1.5B-shaped", 1536, 8960, 28, 12, 2, 151936)
TINY_A = Shape("tiny (in 0.5B's place)", 32, 64, 2, 2, 1, 1000)
TINY_B = Shape("tiny (in 1.5B's place)", 48, 96, 2, 2, 1, 1000)


@dataclass
class Settings:
    """Everything the mode (GPU or dry run) decides."""

    dry_run: bool
    device: str                     # cuda | cpu
    precision: str                  # bf16 (bf16-mixed) | fp32 (32-true): the speed rows
    shapes: tuple[Shape, Shape]     # the speed section's models: all rows on the first, a subset on the second
    batch: int                      # pairs (examples) per step in the speed rows
    max_length: int
    warmup: int                     # untimed steps per speed row
    steps: int                      # timed steps per speed row
    words: dict                     # synthetic text lengths in words (lo, hi): prompt, answer, prefix, continuation
    equality_batch: int
    strategy_model: str             # the strategies section's model (a built-in one: its data is builtin:sft)
    strategy_steps: int
    budgets: dict                   # section -> seconds
    row_limit: float                # seconds one row may take at most
    threads: int                    # torch CPU threads per row
    perturb: str | None = None      # the fp32 equality row whose compared loss is moved (--perturb; dry runs)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def settings_for(dry_run: bool, threads: int, perturb: str | None = None) -> Settings:
    if dry_run:
        return Settings(True, "cpu", "fp32", (TINY_A, TINY_B), batch=2, max_length=96, warmup=0, steps=1,
                        words=dict(prompt=(5, 25), answer=(2, 12), prompt_short=(3, 8), prefix=(10, 25),
                                   continuation=(2, 6)),
                        equality_batch=2, strategy_model="builtin:tiny", strategy_steps=3,
                        # generous: CI runs this beside other tests on 2 cores; the GPU budgets are the real ones
                        budgets=dict(speed_0=300, speed_1=300, equality=300, strategies=300, lora=300),
                        row_limit=300, threads=threads, perturb=perturb)
    # GPU: batch 8 x up to 1024 tokens; 2 untimed + 5 timed steps. Budgets sum to 430 s (+ ~15 s start; and
    # --budget caps the whole): < 8 min. The speed sections include building their model (~5 and ~15 s).
    return Settings(False, "cuda", "bf16", (QWEN2_05B, QWEN2_15B), batch=8, max_length=1024, warmup=2, steps=5,
                    words=dict(prompt=(80, 420), answer=(20, 170), prompt_short=(40, 120), prefix=(250, 500),
                               continuation=(15, 60)),
                    equality_batch=4, strategy_model="builtin:small", strategy_steps=4,
                    budgets=dict(speed_0=140, speed_1=110, equality=50, strategies=90, lora=40),
                    row_limit=100, threads=threads)


# Dense bf16 peak FLOP/s (no sparsity), from the vendors' datasheets, by a part of torch.cuda.get_device_name();
# the first match wins (so "H100 PCIe" before "H100", "A100" before "A10", "L40S" before "L40" before "L4").
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756), ("H100 NVL", 835), ("H200 NVL", 835), ("GH200", 989), ("H200", 989), ("H100", 989),
    ("H800", 989), ("B200", 2250), ("A100", 312), ("A800", 312), ("L40S", 362), ("L40", 181), ("A10", 125),
    ("L4", 121),
]


def peak_tflops(device_name: str) -> float | None:
    for part, tflops in PEAK_BF16_TFLOPS:
        if part in device_name:
            return tflops
    return None


def device_info() -> dict:
    """Runs in a child: the device, its bf16 peak, and what it can do."""
    if not torch.cuda.is_available():
        return {"cuda": False, "name": "cpu", "peak_tflops": None}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": props.name, "memory_gb": props.total_memory / 2 ** 30,
            "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
            "bf16": torch.cuda.is_bf16_supported(), "cuda_version": torch.version.cuda,
            "peak_tflops": peak_tflops(props.name)}


def installed(module: str) -> bool:
    """Importable, without importing it here (the parent stays free of CUDA)."""
    return importlib.util.find_spec(module) is not None


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one row went: ok (with its values), skipped (why), failed (the error's last line) or timed out."""

    status: str
    values: dict = field(default_factory=dict)
    why: str = ""

    def cell(self) -> str:
        """What a table shows in place of the row's numbers when it has none."""
        return {"skipped": f"skipped ({self.why})", "failed": f"failed: {self.why}",
                "timed out": f"timed out ({self.why})"}.get(self.status, "")


class Clock:
    """Elapsed seconds since the start, a deadline per section, and one progress line per row."""

    def __init__(self):
        self.start = time.monotonic()
        self.deadline = float("inf")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)


def last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = (lines[-1] if lines else str(text)).replace("|", "/")  # (it goes in a table cell)
    return (line[:300] + "...") if len(line) > 300 else line


def run_row(label: str, clock: Clock, settings: Settings, log: str, fn, *a, skip: str | None = None) -> Outcome:
    """fn(*a) -> dict in a forked child, within the row limit and what is left of the section's budget."""
    if skip:
        clock.say(f"{label}: skipped ({skip})")
        return Outcome("skipped", why=skip)
    if torch.cuda.is_initialized():  # a bug of this script: say so rather than fail in every child
        return Outcome("failed", why="CUDA was initialised in the parent process: forked rows cannot use it")
    limit = min(settings.row_limit, clock.left())
    if limit < 3:
        clock.say(f"{label}: skipped (section time budget spent)")
        return Outcome("skipped", why="section time budget spent")
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n===== {label} =====\n")
    try:
        values = bench.in_fresh_process(fn, settings.threads, *a, timeout=limit, log=log)
    except TimeoutError as e:
        clock.say(f"{label}: timed out ({e})")
        return Outcome("timed out", why=str(e))
    except Exception as e:  # the child's traceback (or how it died): its last line goes in the report
        clock.say(f"{label}: failed: {last_line(e)}")
        return Outcome("failed", why=last_line(e))
    values["wall_s"] = time.monotonic() - t0
    clock.say(f"{label}: ok ({values['wall_s']:.1f} s){_summary(values)}")
    return Outcome("ok", values)


def _summary(values: dict) -> str:
    if "tokens_per_s" in values:
        return f", {values['step_s'] * 1e3:.0f} ms/step, {values['tokens_per_s']:.0f} tokens/s"
    return f", {values['result']}" if "result" in values else ""


def fmt(x: float) -> str:
    """A difference or a tolerance, short."""
    return "0" if x == 0 else f"{x:.1e}"


# -- the shared model and data ------------------------------------------------------------------------------


class Workspace:
    """Model directories (built on first use, in the parent: CPU only) and synthetic data files, in a temp dir."""

    def __init__(self, settings: Settings, root: Path):
        self.settings, self.root = settings, root
        self.models: dict[Shape, Path] = {}
        self.data: dict[str, tuple[Path, int]] = {}

    def model(self, shape: Shape) -> Path:
        if shape not in self.models:
            args = argparse.Namespace(hidden=shape.hidden, intermediate=shape.intermediate, layers=shape.layers,
                                      heads=shape.heads, kv_heads=shape.kv_heads)
            self.models[shape] = bench.save_model(args, shape.vocab, self.root / f"model_{len(self.models)}",
                                                  arch=shape.arch)
        return self.models[shape]

    def pairs(self, kind: str) -> tuple[Path, int]:
        """kind "pairs": {prompt: messages, chosen, rejected}; "prefix": the same with a long shared `prefix` and
        short partial continuations (no end token). Enough for one speed row; all fit max_length untruncated."""
        if kind not in self.data:
            s = self.settings
            need = s.batch * (s.warmup + s.steps + 1)
            rows = synthetic_pairs(s.words, seed=0, prefix=kind == "prefix")
            self.data[kind] = bench.write_fitting_pairs(itertools.islice(rows, 50 * need), self.model(s.shapes[0]),
                                                        s.max_length, need, self.root / f"{kind}.jsonl")
        return self.data[kind]


def synthetic_pairs(words: dict, seed: int, prefix: bool):
    """Endless records of random words from the built-in tokenizer's corpus, lengths drawn from `words`."""
    from lit_align.data.synthetic import corpus

    vocabulary = sorted({w for text in corpus() for w in text.split() if w.isalpha()})
    rng = random.Random(seed)

    def text(lo_hi: tuple[int, int]) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(*lo_hi)))

    while True:
        if prefix:
            yield {"prompt": [{"role": "user", "content": text(words["prompt_short"])}],
                   "prefix": text(words["prefix"]), "chosen": " " + text(words["continuation"]), "rejected": " " + text(words["continuation"]),
                   "partial": True}
        else:
            yield {"prompt": [{"role": "user", "content": text(words["prompt"])}], "chosen": text(words["answer"]),
                   "rejected": text(words["answer"])}


# -- section: speed -----------------------------------------------------------------------------------------


@dataclass
class SpeedRow:
    case: bench.Case
    library: str = "lit_align"      # lit_align | TRL
    label: str = "lit_align"        # the implementation column
    layout: str = "padded"          # padded | packed | shared context | joined
    data: str = "pairs"             # pairs | prefix
    needs: tuple[str, ...] = ()     # modules it needs (TRL rows also need CUDA)
    both: bool = False              # also on the second (larger) model


def speed_rows() -> list[SpeedRow]:
    C = bench.Case
    trl, liger = ("trl",), ("trl", "liger_kernel")
    return [
        SpeedRow(C("SFT", "lit_align"), both=True),
        SpeedRow(C("SFT", "lit_align", lm_head="all")),
        SpeedRow(C("SFT", "TRL"), "TRL", "TRL", needs=trl, both=True),
        SpeedRow(C("SFT", "TRL", extra={"use_liger_kernel": True}), "TRL", "TRL + Liger kernels", needs=liger),
        SpeedRow(C("IW-SFT", "lit_align")),
        SpeedRow(C("DPO", "lit_align"), both=True),
        SpeedRow(C("DPO", "lit_align", lm_head="all")),
        SpeedRow(C("DPO", "lit_align", packed=True), layout="packed", both=True),
        SpeedRow(C("DPO", "TRL", reference="live"), "TRL", "TRL", needs=trl, both=True),
        SpeedRow(C("DPO", "TRL", reference="live", extra={"use_liger_kernel": True}), "TRL", "TRL + Liger kernels",
                 needs=liger),
        SpeedRow(C("DPO (cached reference)", "lit_align", reference="cache")),
        SpeedRow(C("DPO (cached reference)", "lit_align", reference="cache", packed=True), layout="packed"),
        SpeedRow(C("prefix-DPO", "lit_align"), layout="shared context", data="prefix", both=True),
        SpeedRow(C("prefix-DPO", "lit_align", extra={"shared_context": False}), layout="joined", data="prefix"),
    ]


def row_name(r: SpeedRow) -> str:
    return f"{r.case.objective} | {r.label} | {row_head(r)} | {r.layout}"


def row_head(r: SpeedRow) -> str:
    return "TRL's fused head" if r.library == "TRL" else r.case.lm_head


def speed_section(settings: Settings, ws: Workspace, clock: Clock, log: str, device: dict, index: int,
                  budget: float) -> str:
    shape = settings.shapes[index]
    clock.deadline = time.monotonic() + budget
    rows = [r for r in speed_rows() if index == 0 or r.both]
    model_dir = ws.model(shape)
    params = model_params(model_dir)
    args = argparse.Namespace(device=settings.device, precision=settings.precision, batch=settings.batch,
                              max_length=settings.max_length, warmup=settings.warmup, steps=settings.steps,
                              optimizer="fused" if settings.cuda else "foreach")  # (fused: a CUDA kernel)
    results = []
    for r in rows:
        missing = [m for m in r.needs if not installed(m)]
        skip = ("no CUDA" if r.library == "TRL" and not settings.cuda else
                f"{', '.join(missing)} not installed" if missing else None)
        data, n = ws.pairs(r.data) if not skip else (None, 0)
        runner = bench.run_trl if r.library == "TRL" else bench.run_lit_align
        out = run_row(f"speed / {shape.name} / {row_name(r)}", clock, settings, log, runner, r.case, args, model_dir,
                      data, tempfile.mkdtemp(dir=ws.root), skip=skip)
        results.append((r, out))
    pairs_n = ws.data.get("pairs", (None, 0))[1]
    head = (f"### {shape.name}: {params / 1e6:.3g} M parameters (hidden {shape.hidden}, {shape.layers} layers, "
            f"{shape.heads} heads / {shape.kv_heads} key-value heads, intermediate {shape.intermediate}, vocabulary "
            f"{shape.vocab}, tied), {'bf16-mixed' if settings.precision == 'bf16' else 'fp32'}, batch "
            f"{settings.batch}, synthetic records up to {settings.max_length} tokens ({pairs_n} per row), "
            f"{settings.steps} timed steps after {settings.warmup}")
    return head + "\n\n" + speed_table(results, params, device.get("peak_tflops"))


def model_params(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def speed_table(results: list[tuple[SpeedRow, Outcome]], params: int, peak: float | None) -> str:
    lines = ["| objective | implementation | lm_head | layout | reference | step (ms) | tokens/s | peak memory (MB) | "
             "above the model (MB) | padding | MFU | tokens/s vs TRL |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    trl = {r.case.objective: o.values for r, o in results if r.label == "TRL" and o.status == "ok"}
    for r, o in results:
        ref = r.case.reference if "DPO" in r.case.objective else "—"
        start = f"| {r.case.objective} | {r.label} | {row_head(r)} | {r.layout} | {ref} |"
        if o.status != "ok":
            lines.append(f"{start} {o.cell()} | | | | | | |")
            continue
        v = o.values
        mfu = f"{100 * bench.mfu(r.case, v, params, peak):.1f}%" if peak else "n/a"
        t = trl.get(r.case.objective)
        vs = f"{v['tokens_per_s'] / t['tokens_per_s']:.2f}x" if t and r.library != "TRL" else ""
        lines.append(f"{start} {v['step_s'] * 1e3:.0f} | {v['tokens_per_s']:.0f} | {v['peak_total_mb']:.0f} | "
                     f"{v['peak_mb']:.0f} | {100 * v['padding']:.0f}% | {mfu} | {vs} |")
    return "\n".join(lines)


# -- section: equality --------------------------------------------------------------------------------------

# fp32 on the device: losses within a relative 1e-4, gradients within 1e-3 of the largest gradient entry. bf16
# autocast against fp32 (the same weights): per-token log-probs within 0.05 nats on average and 0.5 at most
# (measured on CPU with random-init models of up to 8 layers: mean <= 0.01, max <= 0.03).
FP32_LOSS_TOL, FP32_GRAD_TOL = 1e-4, 1e-3
BF16_MEAN_TOL, BF16_MAX_TOL = 0.05, 0.5
PERTURBATION = 1e-2
"""--perturb: the relative change of the second run's loss, 100x the tolerance."""
FP32_EQUALITIES = ("lm_head targets vs all: SFT loss and gradients", "lm_head targets vs all: DPO loss and gradients",
                   "packed vs padded DPO, sdpa: loss and gradients", "packed vs padded DPO, eager: loss and gradients",
                   "shared-context vs joined prefix-DPO: loss and gradients")
"""The equality rows that run in fp32 (on CPU too): the rows `--perturb` may name."""


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _objective(cls, model_dir: Path, device: str, **kwargs):
    """The objective on `device`, its policy moved off the starting weights by seeded noise (the same in every
    call), so that policy and reference differ: DPO's loss is then not just log 2."""
    from lit_align.modeling.models import ModelSpec

    policy = kwargs.pop("policy", {})
    obj = cls(policy=ModelSpec(name=str(model_dir), **policy), **kwargs)
    obj.configure_model()
    obj = obj.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in obj.model.parameters():
            p.add_(torch.randn(p.shape, generator=g, device=device) * 0.02)
    return obj


def _batch(obj, data: Path, n: int, max_length: int, device: str) -> dict:
    """The first n records of `data` in the objective's batch layout."""
    from lit_align.data import AlignDataModule

    dm = AlignDataModule(train=str(data), batch_size=n, max_length=max_length, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return _to(next(iter(dm.eval_loader("train", n))), device)


def _loss_and_grads(obj, batch: dict) -> tuple[float, dict]:
    """The objective's loss (sum / count, as the base class normalises it) and its gradients, in fp32."""
    obj.model.zero_grad(set_to_none=True)
    loss_sum, count = obj.step(batch)["loss"]
    loss = loss_sum / count
    loss.backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in obj.model.named_parameters() if p.grad is not None}


def _compare(a: tuple[float, dict], b: tuple[float, dict], perturb: float = 0.0) -> dict:
    (la, ga), (lb, gb) = a, b
    lb *= 1 + perturb  # (--perturb: a difference the comparison must catch)
    if ga.keys() != gb.keys() or not ga:
        raise RuntimeError(f"the two runs have gradients for different parameters ({len(ga)} vs {len(gb)})")
    scale = max(g.abs().max().item() for g in ga.values())
    grad = max((ga[n] - gb[n]).abs().max().item() for n in ga) / max(scale, 1e-30)
    loss = abs(la - lb) / max(abs(la), 1e-30)
    ok = loss <= FP32_LOSS_TOL and grad <= FP32_GRAD_TOL
    return {"measured": f"loss {la:.5f} vs {lb:.5f} (relative Δ {fmt(loss)}); gradients: max abs Δ / max abs g = "
                        f"{fmt(grad)}", "tolerance": f"loss {fmt(FP32_LOSS_TOL)}, gradients {fmt(FP32_GRAD_TOL)}",
            "result": "equal" if ok else "DIFFERS"}


def check_head(settings: Settings, model_dir: Path, data: Path, objective: str, perturb: float = 0.0) -> dict:
    """lm_head: targets (chunked, on target positions) vs all (the plain forward): the same loss and gradients."""
    from lit_align.modeling.logprobs import set_lm_head
    from lit_align.objectives import DPO, SFT

    obj = _objective(SFT if objective == "SFT" else DPO, model_dir, settings.device)
    batch = _batch(obj, data, settings.equality_batch, settings.max_length, settings.device)
    runs = []
    for head in ("targets", "all"):
        set_lm_head(obj.model, head)
        runs.append(_loss_and_grads(obj, batch))
    return _compare(*runs, perturb)


def check_packed(settings: Settings, model_dir: Path, data: Path, attention: str, perturb: float = 0.0) -> dict:
    """DPO on packed pairs (one row a pair, 4D mask) vs padded rows: the same loss and gradients."""
    from lit_align.objectives import DPO

    runs = []
    for packed in (False, True):
        obj = _objective(DPO, model_dir, settings.device, policy={"attn_implementation": attention}, packed=packed)
        runs.append(_loss_and_grads(obj, _batch(obj, data, settings.equality_batch, settings.max_length,
                                                settings.device)))
        del obj
    return _compare(*runs, perturb)


def check_prefix(settings: Settings, model_dir: Path, data: Path, perturb: float = 0.0) -> dict:
    """prefix-DPO with the shared context run once (its key/value cache serving both continuations) vs joined
    (context + continuation as one sequence per row): the same loss and gradients."""
    from lit_align.objectives import PrefixDPO

    runs = []
    for shared in (True, False):
        obj = _objective(PrefixDPO, model_dir, settings.device, shared_context=shared)
        runs.append(_loss_and_grads(obj, _batch(obj, data, settings.equality_batch, settings.max_length,
                                                settings.device)))
        del obj
    return _compare(*runs, perturb)


def check_bf16(settings: Settings, model_dir: Path, data: Path, attention: str | None = None) -> dict:
    """Per-token log-probs of the same fp32 weights under bf16 autocast (as bf16-mixed runs them) against fp32
    (attention None); or, with `attention` (flash_attention_2), that attention against sdpa, both under autocast."""
    from lit_align.modeling.logprobs import forward_logps
    from lit_align.objectives import SFT

    def logps(obj, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _batch(obj, data, settings.equality_batch, settings.max_length, settings.device)
        with torch.no_grad(), torch.autocast(settings.device, dtype=torch.bfloat16, enabled=autocast):
            out = forward_logps(obj.model, batch)
        return out.logps[out.mask], out.sequence

    if attention is None:
        obj = _objective(SFT, model_dir, settings.device)
        (a, seq_a), (b, seq_b) = logps(obj, False), logps(obj, True)
        what = "bf16 autocast vs fp32"
    else:
        (a, seq_a) = logps(_objective(SFT, model_dir, settings.device, policy={"attn_implementation": "sdpa"}), True)
        (b, seq_b) = logps(_objective(SFT, model_dir, settings.device, policy={"attn_implementation": attention}), True)
        what = f"{attention} vs sdpa, bf16 autocast"
    d = (a - b).abs()
    mean, worst = d.mean().item(), d.max().item()
    seq = ((seq_a - seq_b).abs() / seq_a.abs()).max().item()
    ok = mean <= BF16_MEAN_TOL and worst <= BF16_MAX_TOL
    return {"measured": f"{what}: per-token abs Δ log p: mean {fmt(mean)}, max {fmt(worst)} nats over {d.numel()} "
                        f"tokens (mean log p {a.mean().item():.2f}); per-sequence relative max {fmt(seq)}",
            "tolerance": f"mean {BF16_MEAN_TOL}, max {BF16_MAX_TOL}", "result": "equal" if ok else "DIFFERS"}


def equality_section(settings: Settings, ws: Workspace, clock: Clock, log: str, budget: float) -> str:
    clock.deadline = time.monotonic() + budget
    shape = settings.shapes[0]
    model_dir = ws.model(shape)
    pairs, prefix = ws.pairs("pairs")[0], ws.pairs("prefix")[0]
    flash = ("no CUDA" if not settings.cuda else None) or (None if installed("flash_attn") else
                                                           "flash-attn not installed")
    head_sft, head_dpo, packed_sdpa, packed_eager, shared_prefix = FP32_EQUALITIES
    checks = [
        (head_sft, check_head, (pairs, "SFT"), None),
        (head_dpo, check_head, (pairs, "DPO"), None),
        (packed_sdpa, check_packed, (pairs, "sdpa"), None),
        (packed_eager, check_packed, (pairs, "eager"), None),
        (shared_prefix, check_prefix, (prefix,), None),
        ("bf16 log-probs against fp32", check_bf16, (pairs,), None if settings.cuda else "no CUDA"),
        ("flash-attention 2 vs sdpa log-probs (bf16)", check_bf16, (pairs, "flash_attention_2"), flash),
    ]
    lines = [f"{shape.name} model, batch {settings.equality_batch}, records up to {settings.max_length} tokens, on "
             f"{settings.device}, fp32 unless the row says otherwise.", "",
             "| check | measured | tolerance | result |", "|---|---|---|---|"]
    for name, fn, a, skip in checks:
        if name == settings.perturb:
            a = (*a, PERTURBATION)
        o = run_row(f"equality / {name}", clock, settings, log, fn, settings, model_dir, *a, skip=skip)
        v = o.values
        lines.append(f"| {name} | {v.get('measured', '')} | {v.get('tolerance', '')} | {v.get('result', o.cell())} |")
    return "\n".join(lines)


# -- section: strategies ------------------------------------------------------------------------------------

STRATEGY_TOL = 1e-4  # per-step train/loss, fp32
# AdamW's step hardly changes when every gradient is scaled by one factor; with eps = 1 (far above |g|) the step is
# ~lr * gradient, so a wrong normalisation (a factor on the gradient) shows in the next steps' losses.
STRATEGY_LR, STRATEGY_EPS = 0.3, 1.0


def strategy_losses(settings: Settings, strategy: str, batch: int, accumulate: int, lr_scale: float,
                    work: str) -> dict:
    """SFT on builtin:sft for a few steps with `strategy` on one device: the logged train/loss per optimizer step
    (CSVLogger), and whether lit_align refuses the strategy for training (DeepSpeed: then bypassed, here only)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lit_align.data import AlignDataModule
    from lit_align.errors import LitAlignError
    from lit_align.modeling.models import ModelSpec
    from lit_align.objectives import SFT, OptimSpec
    from lit_align.objectives import base

    strat = make_strategy(strategy)
    refused = None
    try:
        base.check_strategy(strat)
    except LitAlignError as e:
        refused = str(e).split(":")[0]
        base.UNVERIFIED_STRATEGIES.clear()  # this child only: run it anyway, to see whether the refusal is needed
    obj = SFT(policy=ModelSpec(name=settings.strategy_model),
              optim=OptimSpec(lr=STRATEGY_LR * lr_scale, eps=STRATEGY_EPS, schedule="constant"))
    dm = AlignDataModule(train={"path": "builtin:sft", "limit": 8 * settings.strategy_steps}, batch_size=batch,
                         max_length=64, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    trainer = L.Trainer(accelerator=settings.device, devices=1, strategy=strat, precision="32-true",
                        max_steps=settings.strategy_steps, accumulate_grad_batches=accumulate,
                        logger=CSVLogger(work, name="run"), log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0)
    trainer.fit(obj, datamodule=dm)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    if sorted(losses) != list(range(settings.strategy_steps)):
        raise RuntimeError(f"train/loss logged at steps {sorted(losses)}, not 0..{settings.strategy_steps - 1}")
    return {"losses": [losses[s] for s in sorted(losses)], "refused": refused,
            "result": " ".join(f"{x:.4f}" for x in losses.values())}


def make_strategy(name: str):
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    from lit_align.modeling.models import fsdp_auto_wrap_policy

    if name == "none":
        return "auto"
    if name == "FSDP2":
        return ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1, save_distributed_checkpoint=False)
    if name == "FSDP1":
        return FSDPStrategy(sharding_strategy="FULL_SHARD", auto_wrap_policy=fsdp_auto_wrap_policy)
    if name == "DeepSpeed ZeRO-2":
        return DeepSpeedStrategy(stage=2)
    raise ValueError(name)


def strategies_section(settings: Settings, ws: Workspace, clock: Clock, log: str, budget: float) -> str:
    clock.deadline = time.monotonic() + budget
    gpu_only = None if settings.cuda else "no CUDA"
    deepspeed = gpu_only or (None if installed("deepspeed") else "deepspeed not installed")
    plan = [("none (one device)", "none", None), ("FSDP2 (ModelParallelStrategy)", "FSDP2", None),
            ("DeepSpeed ZeRO-2", "DeepSpeed ZeRO-2", deepspeed), ("FSDP1 (FSDPStrategy)", "FSDP1", gpu_only)]

    def run(name, strategy, batch, accumulate, lr_scale=1.0, skip=None) -> Outcome:
        label = f"strategies / {name} / batch {batch} x accumulation {accumulate}" + (
            f" / lr x {lr_scale:g}" if lr_scale != 1 else "")
        return run_row(label, clock, settings, log, strategy_losses, settings, strategy, batch, accumulate, lr_scale,
                       tempfile.mkdtemp(dir=ws.root), skip=skip)

    plain = run(plan[0][0], "none", 8, 1)
    lines = [f"SFT of {settings.strategy_model} on builtin:sft (token counts vary from step to step), fp32, "
             f"{settings.strategy_steps} optimizer steps, AdamW with lr {STRATEGY_LR} and eps {STRATEGY_EPS} (eps "
             "far above the gradients makes each step ~lr x gradient: Adam alone would hide a constant factor on the "
             f"gradient). Same examples in the same order. Tolerance: {fmt(STRATEGY_TOL)} on every step's train/loss.",
             "", "| strategy | lit_align for training | train/loss per step (batch 8) | max abs Δ, batch 8 vs 4 x 2 | "
             "max abs Δ vs no strategy, batch 8 | result |", "|---|---|---|---|---|---|"]
    for name, strategy, skip in plan:
        skip = skip or (None if plain.status == "ok" else "the run without a strategy did not run")
        eight = plain if strategy == "none" else run(name, strategy, 8, 1, skip=skip)
        four = run(name, strategy, 4, 2, skip=skip if eight.status == "ok" else "its batch-8 run did not run")
        if eight.status != "ok" or four.status != "ok":
            bad = eight if eight.status != "ok" else four
            refused = "refused by lit_align (normalisation unverified)" if strategy == "DeepSpeed ZeRO-2" else ""
            lines.append(f"| {name} | {refused} | {bad.cell()} | | | |")
            continue
        a, b = eight.values["losses"], four.values["losses"]
        accum = max(abs(x - y) for x, y in zip(a, b))
        # (plain is ok here: every other strategy's batch-8 run is skipped when it is not)
        base = max(abs(x - y) for x, y in zip(a, plain.values["losses"]))
        refused = eight.values["refused"]
        allowed = f"refused ({refused}); bypassed in this check" if refused else "allowed"
        ok = accum <= STRATEGY_TOL and base <= STRATEGY_TOL
        if ok:
            result = "equal" + ("; lit_align's refusal could be lifted for one GPU" if refused else "")
        else:
            result = "DIFFERS" + ("; the refusal stands (normalisation wrong under it)" if refused else "")
        lines.append(f"| {name} | {allowed} | {eight.values['result']} | {fmt(accum)} | "
                     f"{'—' if strategy == 'none' else fmt(base)} | {result} |")
    # the check's power: what a factor 2 on the gradient (e.g. a sum over 2 micro-batches not divided by 2) does
    doubled = run(plan[0][0], "none", 8, 1, lr_scale=2.0)
    if doubled.status == "ok" and plain.status == "ok":
        d = max(abs(x - y) for x, y in zip(doubled.values["losses"], plain.values["losses"]))
        lines += ["", "Sensitivity: the same run with lr x 2 (what a factor 2 on the gradient does) differs from it "
                      f"by max abs Δ {fmt(d)} ({d / STRATEGY_TOL:.0f}x the tolerance)."]
    else:
        lines += ["", f"Sensitivity run (lr x 2): {doubled.cell() or plain.cell()}"]
    return "\n".join(lines)


# -- section: LoRA / QLoRA ----------------------------------------------------------------------------------


def lora_train_export_reload(settings: Settings, model_dir: Path, data: Path, quantize: bool, work: str) -> dict:
    """A few SFT steps of a LoRA adapter (on 4-bit NF4 weights with `quantize`), exported at the end of fit by
    lit_align's ExportHF, reloaded onto a freshly loaded base with peft: the reloaded logits against the trained
    model's, on the same batch."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lit_align.callbacks.export import ExportHF
    from lit_align.data import AlignDataModule
    from lit_align.modeling.models import LoraSpec, ModelSpec, quantization_kwargs
    from lit_align.objectives import SFT, OptimSpec

    spec = ModelSpec(name=str(model_dir), quantization="4bit" if quantize else None, gradient_checkpointing=quantize,
                     lora=LoraSpec(r=16, alpha=32, dropout=0.0))
    obj = SFT(policy=spec, optim=OptimSpec(lr=1e-3, schedule="constant"))
    dm = AlignDataModule(train=str(data), batch_size=4, max_length=settings.max_length, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    out = Path(work) / "adapter"
    steps = 4 if settings.cuda else 2
    autocast = dict(device_type=settings.device, dtype=torch.bfloat16, enabled=settings.cuda)

    def logits(model, batch: dict) -> torch.Tensor:  # (B, T, V) fp32 on CPU, eval mode, as bf16-mixed computes them
        with torch.no_grad(), torch.autocast(**autocast):
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().cpu()

    class TrainedLogits(L.Callback):
        """The trained model's logits on the first batch, taken on its device before fit's teardown moves it."""

        def on_train_end(self, trainer, module):
            module.model.eval()
            self.batch = _to(next(iter(trainer.datamodule.eval_loader("train", 4))), module.device)
            self.logits = logits(module.model, self.batch)

    trained_logits = TrainedLogits()
    trainer = L.Trainer(accelerator=settings.device, devices=1, precision="bf16-mixed" if settings.cuda else "32-true",
                        max_steps=steps, logger=CSVLogger(work, name="run"), log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[trained_logits, ExportHF(dirpath=str(out))])
    trainer.fit(obj, datamodule=dm)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    files = sorted(p.name for p in out.iterdir())
    if "adapter_config.json" not in files:
        raise RuntimeError(f"no adapter_config.json in the export ({files})")
    trained = sum(p.abs().sum().item() for n, p in obj.model.named_parameters() if "lora_B" in n)
    # the base as lit_align loads it (4-bit: quantized onto the GPU by from_pretrained, not moved after)
    kwargs = quantization_kwargs(spec) if quantize else {}
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    reloaded = PeftModel.from_pretrained(base, out)
    reloaded = (reloaded if quantize else reloaded.to(settings.device)).eval()
    a = trained_logits.logits
    b = logits(reloaded, _to(trained_logits.batch, settings.device))
    diff = ((a - b).abs().max() / a.abs().max()).item()
    size = sum(p.stat().st_size for p in out.iterdir()) / 2 ** 20
    ok = diff <= 1e-3 and trained > 0 and len(losses) == steps
    return {"steps": len(losses), "losses": f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses else "none logged",
            "export": f"{', '.join(files)} ({size:.1f} MB)",
            "reload": f"max abs Δ logits / max abs logit = {fmt(diff)}",
            "result": ("equal" if ok else "DIFFERS") + ("" if trained > 0 else " (lora_B still zero: nothing trained)")}


def lora_section(settings: Settings, ws: Workspace, clock: Clock, log: str, budget: float) -> str:
    clock.deadline = time.monotonic() + budget
    shape = settings.shapes[0]
    model_dir, data = ws.model(shape), ws.pairs("pairs")[0]
    qlora_skip = "no CUDA" if not settings.cuda else (None if installed("bitsandbytes") else
                                                      "bitsandbytes not installed")
    precision = "bf16-mixed" if settings.cuda else "fp32"
    plan = [(f"LoRA r 16, {precision} (no quantization)", False, None),
            ("QLoRA: 4-bit NF4 base (bitsandbytes), LoRA r 16, bf16-mixed, gradient checkpointing", True, qlora_skip)]
    lines = [f"SFT on {shape.name}, batch 4; the adapter is written by lit_align's ExportHF at the end of fit, "
             "reloaded onto a newly loaded base (quantized the same way) with peft.PeftModel.from_pretrained, and its "
             "logits compared with the trained model's (tolerance 1e-3 of the largest logit).", "",
             "| run | steps | train/loss first → last | export | reload | result |", "|---|---|---|---|---|---|"]
    for name, quantize, skip in plan:
        o = run_row(f"lora / {name}", clock, settings, log, lora_train_export_reload, settings, model_dir, data,
                    quantize, tempfile.mkdtemp(dir=ws.root), skip=skip)
        v = o.values
        if o.status != "ok":
            lines.append(f"| {name} | {o.cell()} | | | | |")
        else:
            lines.append(f"| {name} | {v['steps']} | {v['losses']} | {v['export']} | {v['reload']} | {v['result']} |")
    return "\n".join(lines)


# -- the report ---------------------------------------------------------------------------------------------

SECTIONS = ("speed", "equality", "strategies", "lora")


def header(settings: Settings, device: dict, argv: list[str]) -> str:
    if device.get("cuda"):
        peak = f"{device['peak_tflops']} TFLOP/s dense bf16" if device["peak_tflops"] else "n/a (not in the table)"
        where = (f"{device['name']} ({device['memory_gb']:.0f} GiB, compute capability {device['capability']}, "
                 f"{device['count']} visible, CUDA {device['cuda_version']}); bf16 peak {peak}")
    else:
        where = "CPU (no CUDA device)"
    versions = ", ".join(f"{d} {version(d)}" for d in ("torch", "transformers", "lightning", "peft", "trl",
                                                        "bitsandbytes", "deepspeed", "liger-kernel", "flash-attn",
                                                        "triton"))
    mode = ("DRY RUN: CPU, tiny models, fp32, a step or two per row; CUDA-only rows skipped. The numbers only show "
            "that the code runs." if settings.dry_run else "GPU run")
    setup = os.environ.get("GPU_CHECK_SETUP")
    from packaging.version import Version

    old = Version(version("transformers")) < Version("5.23")  # lit_align's requirement (pyproject.toml)
    return "\n".join([
        "# lit_align GPU check", "",
        f"`python scripts/gpu_check.py {' '.join(argv)}`".replace(" `", "`"), "",
        f"- mode: {mode}",
        f"- device: {where}",
        f"- {versions}",
        *([f"- setup: {setup}"] if setup else []),
        *([f"- **warning**: transformers {version('transformers')} is older than lit_align's requirement (>= 5.23)"]
          if old else []),
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S')}; {os.cpu_count()} CPU cores, {settings.threads} torch threads",
        "",
        "On a GPU both libraries keep fp32 weights and AdamW state and compute under bf16 autocast (bf16-mixed). "
        "Tokens count every real token of the sequences a step trains on (a pair: prompt + chosen and prompt + "
        "rejected, however the implementation computes them). Peak memory is torch.cuda.max_memory_allocated over "
        "the training steps (on CPU: peak resident memory); 'above the model' subtracts what was allocated when "
        "training started (the model, its reference, the data). MFU = tokens/s x FLOPs per token / the device's "
        "dense bf16 peak, with FLOPs per token = 6 N (forward 2 N, backward 4 N; N parameters, the tied LM head "
        "counted as a matmul on every token) + 2 N for a live reference's forward (DPO and prefix-DPO with a "
        "reference copy; TRL DPO), attention left out (at 1024 tokens about 5% of 6 N for these shapes). Rows that "
        "skip work (LM head on targets only, packed pairs, a shared context, a cached reference) are credited with "
        "the full count: their MFU is an effective one.",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The GPU check: lit_align's speed (beside TRL), equalities, strategies "
                                "and QLoRA on one CUDA GPU, as a markdown report (module docstring: what each does).")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, fp32: check that the script runs")
    p.add_argument("--out", default="gpu_check_report.md", help="the markdown report")
    p.add_argument("--log", help="the rows' own output (default: the report's path with .log)")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads per row")
    p.add_argument("--budget", type=float, default=465, help="seconds for the whole check: a section gets its own "
                   "budget or what is left of this, whichever is less")
    p.add_argument("--keep", action="store_true", help="keep the work directory (models, data)")
    p.add_argument("--perturb", choices=FP32_EQUALITIES, metavar="ROW", help="dry runs: move this fp32 equality "
                   "row's compared loss by 1%%, to see the row DIFFER and the run fail (one of: "
                   + "; ".join(FP32_EQUALITIES) + ")")
    args = p.parse_args(argv)
    if args.perturb and not args.dry_run:
        p.error("--perturb is for --dry-run only (it breaks a check on purpose)")
    argv = sys.argv[1:] if argv is None else argv
    settings = settings_for(args.dry_run, args.threads, args.perturb)
    out = Path(args.out)
    log = str(Path(args.log) if args.log else out.with_suffix(".log"))
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_text("")
    clock = Clock()
    clock.say(f"gpu_check: {'dry run (CPU)' if args.dry_run else 'GPU'}; rows' output in {log}")
    import lightning  # noqa: F401  (imported once here: each forked row then starts at once)

    import lit_align.objectives  # noqa: F401

    clock.deadline = time.monotonic() + 120
    probe = run_row("device", clock, settings, log, device_info)
    device = probe.values if probe.status == "ok" else {"cuda": False, "name": "unknown", "peak_tflops": None}
    parts, times = [header(settings, device, argv)], []

    def write(note: str = "") -> str:  # after every section, so that a run cut short still leaves its report
        report = "\n\n".join(parts + ([note] if note else [])) + "\n"
        out.write_text(report)
        return report

    if not args.dry_run and not device.get("cuda"):
        why = probe.cell() or "torch.cuda.is_available() is false"
        write(f"**No CUDA device** ({why}): nothing was run. `--dry-run` checks the script on CPU.")
        print(f"gpu_check: no CUDA device ({why}); use --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lit_align_gpu_check_"))
    ws = Workspace(settings, work)

    def section(title: str, budget_key: str, fn, *a) -> None:
        t0 = time.monotonic()
        budget = max(0, round(min(settings.budgets[budget_key], args.budget - clock.elapsed())))
        clock.say(f"== {title} (budget {budget} s)")
        try:
            body = fn(settings, ws, clock, log, *a, budget)
        except Exception:  # the section's own set-up failed (model, data): recorded, the others still run
            body = f"failed: {last_line(traceback.format_exc())}"
            clock.say(f"{title}: {body}")
        parts.append(body)
        times.append((title, time.monotonic() - t0, budget))
        write("*(the check is still running: later sections missing)*")

    try:
        if "speed" in args.sections:
            parts.append("## 1. Speed: train steps (lit_align and TRL side by side)")
            for i, shape in enumerate(settings.shapes):
                section(f"speed / {shape.name}", f"speed_{i}", speed_section, device, i)
        if "equality" in args.sections:
            parts.append("## 2. Equality on the device")
            section("equality", "equality", equality_section)
        if "strategies" in args.sections:
            parts.append("## 3. Strategies on one device: batch 8 = batch 4 x accumulation 2")
            section("strategies", "strategies", strategies_section)
        if "lora" in args.sections:
            parts.append("## 4. LoRA and QLoRA: train, export the adapter, reload")
            section("lora", "lora", lora_section)
    finally:
        if args.keep:
            clock.say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    parts += ["## Time", "\n".join(["| section | wall (s) | budget (s) |", "|---|---:|---:|",
                                    *(f"| {t} | {s:.0f} | {b} |" for t, s, b in times),
                                    f"| total (from the start of gpu_check.py) | {clock.elapsed():.0f} | |"])]
    report = write()
    print("\n" + report, flush=True)
    clock.say(f"report written to {out}")
    differing = differing_rows(report)
    if differing:
        print(f"gpu_check: FAILED: {len(differing)} row(s) DIFFER: " + "; ".join(differing), file=sys.stderr, flush=True)
        return 1
    return 0


def table_cells(report: str) -> list[list[str]]:
    """The cells of every markdown table row of the report."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in report.splitlines() if line.startswith("| ")]


def differing_rows(report: str) -> list[str]:
    """The first cells of the report's table rows whose result (the last cell) is DIFFERS."""
    return [r[0] for r in table_cells(report) if r and r[-1].startswith("DIFFERS")]


if __name__ == "__main__":
    sys.exit(main())
