"""Sample-efficiency sweeps: engine.py (a grid of objectives x sizes x seeds run in process or as a SLURM array,
CAA runs, results.csv and a figure), command.py (`python -m lit_align.sweep ...`)."""
