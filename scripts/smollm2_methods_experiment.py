"""The method comparison on a real chat model (experiments/smollm2_methods.py): CAA, SFT, CAA on SFT, IW-SFT and DPO
on builtin:smollm2-135m-instruct from n model-written-evals pairs, ID and OOD, with a capability check.

    .venv/bin/python scripts/smollm2_methods_experiment.py            # needs bash scripts/setup.sh real
    .venv/bin/python scripts/smollm2_methods_experiment.py --quick    # a smoke test
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: experiments/ is not installed
from experiments.smollm2_methods import main  # noqa: E402

if __name__ == "__main__":
    main()
