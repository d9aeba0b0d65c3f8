"""Turn GSM8K model solutions into prefix-DPO pair records (logic: lit_align/data/gsm8k.py).

    python scripts/gsm8k_prefix_pairs.py ../shared/data/gsm8k/example_model_solutions.jsonl \
        data/gsm8k_prefix_pairs.jsonl
    lit_align fit --config configs/examples/prefix_dpo_gsm8k.yaml
"""

import argparse
import json

from lit_align.data.gsm8k import convert

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="example_model_solutions.jsonl")
    parser.add_argument("dst", help="output JSONL of {prompt, prefix, chosen, rejected, partial} (held-out "
                                    "questions go to <dst stem>_val.jsonl)")
    parser.add_argument("--max-lines", type=int, default=None,
                        help="cut both continuations after this many lines past the shared prefix (partial pairs)")
    parser.add_argument("--min-prefix-lines", type=int, default=0,
                        help="keep only pairs that share at least this many lines")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of questions held out for validation")
    args = parser.parse_args()
    print(json.dumps(convert(args.src, args.dst, args.max_lines, args.min_prefix_lines, args.val_fraction)))
