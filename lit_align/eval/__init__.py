"""Evaluation of generated text: scorers.py (match, ab_letter, final_number, regex, substring; one Scorer over
records and texts), rewards.py (reward functions for online RL: scorers by name, Python functions by import
path, weights)."""
