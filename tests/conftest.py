"""Shared test fixtures: tiny models built in code, fp32 on CPU, no hub."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest -n 2 runs two workers on two cores: one torch thread each (and in their CLI subprocesses), else
# the threads of both fight over the cores and a 40 ms step can take seconds.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
requires_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} is absent")
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def tokenizer():
    from lit_align.modeling.models import builtin_tokenizer

    return builtin_tokenizer()


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `lit_align <args>` in a subprocess (as a user would), from `cwd`."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move a model's weights by seeded noise (e.g. a policy away from its reference copy), the same every call."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
