"""Models and what comes out of them: models.py (hub / local / built-in models and tokenizers, LoRA, FSDP wrapping),
logprobs.py (fp32 per-token log-probs, chunked heads, packed rows), generation.py (batched generation, the one
prompt -> text step), export.py (a checkpoint's policy as a Hugging Face directory)."""
