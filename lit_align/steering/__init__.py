"""Steering: vectors.py (contrastive activation addition: extraction, the residual-stream hook, pair margins,
p_match, steerability), caa.py (CAA as a method: layer and multiplier chosen on held-out pairs, evaluated on
likelihood- and generation-scored sets). Steering during an objective's validation is callbacks/steering.py."""
