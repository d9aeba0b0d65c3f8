"""The experiments: apps over the package, kept in the repository beside the configs they run (configs/sweeps/,
configs/experiments/) and outside the installed package; each has a thin entry point under scripts/."""
