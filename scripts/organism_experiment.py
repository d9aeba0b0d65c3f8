"""The steering / model-organism experiment (lit_align/experiments/organism.py): CAA, SFT, CAA on SFT, IW-SFT and
DPO on the built-in model organism, by number of training pairs, in and out of distribution.

    .venv/bin/python scripts/organism_experiment.py            # ~30 min on 2 CPU cores
    .venv/bin/python scripts/organism_experiment.py --quick    # a smoke test
"""

from lit_align.experiments.organism import main

if __name__ == "__main__":
    main()
