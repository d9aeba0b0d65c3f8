"""Save the final model in Hugging Face format at the end of `fit`.

The directory loads back with `AutoModelForCausalLM.from_pretrained` (with a LoRA policy: the adapter,
loadable with peft, or the merged model when `policy.lora.merge_on_export` is set); a reward model's with
`AutoModelForSequenceClassification.from_pretrained` (LoRA merged).
"""

from __future__ import annotations

import os

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_align.modeling.export import export_module
from lit_align.noise import no_save_bar


class ExportHF(Callback):
    def __init__(self, dirpath: str | None = None, enabled: bool = True):
        """
        Args:
            dirpath: where to write the model; default <log_dir>/hf_model (next to the TensorBoard events).
            enabled: set false to skip the export.
        """
        self.dirpath, self.enabled = dirpath, enabled
        self.saved_to: str | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.interrupted:
            return
        path = self.dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "hf_model")
        with no_save_bar():
            export_module(trainer, pl_module, path)  # every rank: FSDP/FSDP2 gather the full weights for rank 0
        rank_zero_info(f"final model (Hugging Face format): {path}")
        self.saved_to = path
        trainer.strategy.barrier()
