"""The A/B bias experiment (experiments/ab_bias.py): SFT vs importance-reweighted SFT (loss and
resample) vs DPO from a starting model biased toward (A); prints a markdown table.

    .venv/bin/python scripts/ab_experiment.py [--seeds 0 1 2] [--steps N] [--out logs/ab_experiment]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: experiments/ is not installed
from experiments.ab_bias import main  # noqa: E402

if __name__ == "__main__":
    main()
