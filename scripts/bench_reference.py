"""Wall time of one training step (forward + backward + AdamW) of DPO and prefix-DPO with each reference mode.

    python scripts/bench_reference.py                       # builtin:small, batch 8, CPU
    python scripts/bench_reference.py --model builtin:tiny --steps 10 --threads 1

All modes train the same LoRA policy (so `disable_adapter` is possible and only the reference differs);
`copy (full)` trains the whole model. For `cache`, the one-off time to compute the cache over the data is
shown apart (it is paid once per model and data, then reused across runs). CPU time (this process) is less
sensitive than wall time to other load on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from lit_align.data import AlignDataModule
from lit_align.modeling.models import LoraSpec, ModelSpec
from lit_align.objectives import DPO, PrefixDPO
from lit_align.objectives.reference import ReferenceSpec


def bench(cls, task: str, mode: str, lora: bool, args, cache_dir: str) -> tuple[float, float, float | None]:
    """(median wall s, median CPU s of this process, cache build s) of a training step."""
    policy = ModelSpec(name=args.model, lora=LoraSpec(r=8) if lora else None)
    obj = cls(policy=policy, beta=0.1, reference=ReferenceSpec(mode=mode, cache_dir=cache_dir))
    obj.configure_model()
    dm = AlignDataModule(train={"path": task, "limit": args.batch * (args.steps + 2)}, batch_size=args.batch,
                         max_length=args.max_length)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    build = None
    if mode == "cache":
        start = time.perf_counter()
        obj.reference.prepare(obj.model, dm, from_policy=True)
        build = time.perf_counter() - start
    obj.train()
    optimizer = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-4)
    times, cpu = [], []
    for i, batch in enumerate(dm.train_dataloader()):
        start, start_cpu = time.perf_counter(), time.process_time()
        sums = obj.step(batch)
        (sums["loss"][0] / sums["loss"][1]).backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= 2:  # the first steps warm up allocators and kernels
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu), build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [("copy (full)", "copy", False), ("copy", "copy", True), ("disable_adapter", "disable_adapter", True),
            ("cache", "cache", True)]
    print(f"{args.model}, batch {args.batch} pairs, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print("| objective | reference | step wall (ms) | step CPU (ms) | cache build (s) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache_dir:
        for cls, task in ((DPO, "builtin:pairs"), (PrefixDPO, "builtin:steers")):
            for label, mode, lora in rows:
                step, cpu, build = bench(cls, task, mode, lora, args, cache_dir)
                print(f"| {cls.__name__} | {label} | {1000 * step:.1f} | {1000 * cpu:.1f} | "
                      f"{'' if build is None else f'{build:.2f}'} |", flush=True)


if __name__ == "__main__":
    main()
