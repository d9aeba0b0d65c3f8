"""`lit_align export CHECKPOINT OUT_DIR [--merge-lora | --no-merge-lora]`: the command's parsing; the export is
lit_align/modeling/export.py."""

from __future__ import annotations

import argparse
import os
import sys

from lit_align.errors import LitAlignError
from lit_align.modeling.export import export_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lit_align export",
        description="Write the policy of a lit_align checkpoint (any strategy) as a Hugging Face model directory.")
    parser.add_argument("checkpoint", help="a .ckpt file, or a sharded FSDP/FSDP2 or DeepSpeed checkpoint directory")
    parser.add_argument("out_dir", help="the Hugging Face model directory to write")
    merge = parser.add_mutually_exclusive_group()
    merge.add_argument("--merge-lora", dest="merge_lora", action="store_true", default=None,
                       help="merge the LoRA adapter into the base model (default: the run's merge_on_export; "
                            "always for a reward model)")
    merge.add_argument("--no-merge-lora", dest="merge_lora", action="store_false",
                       help="save the LoRA adapter alone")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, merge_lora=args.merge_lora)
    except LitAlignError as e:
        print(f"lit_align export: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"exported {args.checkpoint} -> {out}", flush=True)
