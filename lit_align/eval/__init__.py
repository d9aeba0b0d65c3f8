"""Evaluation of generated text: scorers.py (match, ab_letter, final_number, regex, substring; one Scorer over
records and texts)."""
