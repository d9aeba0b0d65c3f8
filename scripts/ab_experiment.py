"""The A/B bias experiment (lit_align/experiments/ab_bias.py): SFT vs importance-reweighted SFT (loss and
resample) vs DPO from a starting model biased toward (A); prints a markdown table.

    .venv/bin/python scripts/ab_experiment.py [--seeds 0 1 2] [--steps N] [--out logs/ab_experiment]
"""

from lit_align.experiments.ab_bias import main

if __name__ == "__main__":
    main()
