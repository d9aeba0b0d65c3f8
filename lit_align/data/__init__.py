from lit_align.data.datamodule import AlignDataModule
from lit_align.data.sources import Source

__all__ = ["AlignDataModule", "Source"]
