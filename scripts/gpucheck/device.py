"""The machine: the device's dense bf16 peak (by its name), what the device is (asked in a child process: the
parent stays free of CUDA), whether a module is installed, a library's version."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch


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
