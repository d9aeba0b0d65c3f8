"""lit_align: alignment objectives as PyTorch Lightning modules over one shared data module."""

__version__ = "0.1.0"
