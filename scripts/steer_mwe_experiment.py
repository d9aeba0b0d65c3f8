"""CAA's own experiment on a real chat model (experiments/steer_mwe.py): a layer x multiplier sweep of CAA on five
model-written-evals behaviours, in (lm) and out of distribution (human), on builtin:smollm2-135m-instruct.

    .venv/bin/python scripts/steer_mwe_experiment.py            # needs bash scripts/setup.sh real
    .venv/bin/python scripts/steer_mwe_experiment.py --quick    # a smoke test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: experiments/ is not installed
from experiments.steer_mwe import main  # noqa: E402

if __name__ == "__main__":
    main()
