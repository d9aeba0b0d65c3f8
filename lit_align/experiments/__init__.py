"""Experiments run through the package (each has a thin entry point under scripts/)."""
