"""A grid of objectives x training-set sizes x seeds -> results.csv and a figure (see lit_align/sweep/engine.py).

    python scripts/sweep.py run configs/sweeps/ab_sample_efficiency.yaml       # here, one run after another
    python scripts/sweep.py slurm configs/sweeps/ab_sample_efficiency.yaml     # a SLURM job array + collect job
"""

from lit_align.sweep.command import main

if __name__ == "__main__":
    main()
