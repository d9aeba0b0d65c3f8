"""lit_align: alignment objectives as PyTorch Lightning modules over one shared data module."""

from lit_align import moved as _moved

__version__ = "0.1.0"
_moved.install()
