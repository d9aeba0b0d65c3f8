"""The steering / model-organism experiment (experiments/organism.py): CAA, SFT, CAA on SFT, IW-SFT and
DPO on the built-in model organism, by number of training pairs, in and out of distribution.

    .venv/bin/python scripts/organism_experiment.py            # ~30 min on 2 CPU cores
    .venv/bin/python scripts/organism_experiment.py --quick    # a smoke test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: experiments/ is not installed
from experiments.organism import main  # noqa: E402

if __name__ == "__main__":
    main()
