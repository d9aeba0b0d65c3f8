"""scripts/bench.py's parts: cases (rows, shared model and data), measure (Meter, fresh processes), runners
(lit_align, TRL, prefix sharing), tables. bench.py is the command and re-exports their names."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
