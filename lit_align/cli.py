"""`lit_align fit|validate|test|predict --config X.yaml`: LightningCLI with lit_align's defaults.
(`lit_align export ...` and `lit_align steer --config X.yaml` are dispatched to export.py / steering_cli.py.)

The objective (`model:`) and the data module (`data:`) are chosen by `class_path` in the YAML. Run-time
values are wired here, in code: the data module gets the objective's tokenizer (hence pad id and
vocabulary) and the kind of examples it consumes. Defaults: TensorBoard under logs/<experiment>/,
checkpoints with last.ckpt under logs/<experiment>/checkpoints/, a rich progress bar, a learning-rate
monitor, the final model exported in Hugging Face format, seed 0.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from lit_align.callbacks import ExportHF, NonFiniteGuard, RunCheckpoint, SlurmRequeue  # noqa: E402
from lit_align.callbacks.requeue import Requeued  # noqa: E402
from lit_align.data.datamodule import AlignDataModule  # noqa: E402
from lit_align.errors import LitAlignError  # noqa: E402
from lit_align.objectives.base import Objective  # noqa: E402


class LitAlignCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True):
        super().__init__(
            model_class=Objective, subclass_mode_model=True,
            datamodule_class=AlignDataModule, subclass_mode_data=True,
            trainer_defaults={
                "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                           "init_args": {"save_dir": "logs", "name": "default", "default_hp_metric": False}},
                "callbacks": [RichProgressBar(leave=True), LearningRateMonitor(logging_interval="step")],
                "log_every_n_steps": 10,
            },
            seed_everything_default=0,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args, run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ExportHF, "export")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(SlurmRequeue, "requeue")
        # Without a config, `lit_align fit` trains the embedded tiny default (SFT of builtin:tiny on builtin:sft),
        # and overlay configs (configs/strategies/*.yaml: trainer options only) parse on their own.
        parser.set_defaults({"model": {"class_path": "lit_align.objectives.SFT"},
                             "data": {"class_path": "lit_align.data.AlignDataModule"}})

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule.connect(self.model.tokenizer, self.model.kind)

    def after_fit(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under DDP/FSDP: every rank asks
        if not trainer.is_global_zero:
            return
        lines = [f"TensorBoard logs: {log_dir}   (view: tensorboard --logdir {trainer.logger.save_dir})"]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.dirpath:
            lines.append(f"checkpoints:      {ckpt.dirpath}   (resume: add --ckpt_path last)")
        for cb in trainer.callbacks:
            if isinstance(cb, ExportHF) and cb.saved_to:
                lines.append(f"final model:      {cb.saved_to}")
        print("\n".join(lines), flush=True)


def main(args=None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:  # `lit_align export CKPT OUT_DIR [--merge-lora]` (lit_align/export.py)
        from lit_align.export import main as export_main

        return export_main(argv[1:])
    if argv[:1] == ["steer"]:  # `lit_align steer --config X.yaml` (lit_align/steering_cli.py)
        from lit_align.steering_cli import main as steer_main

        return steer_main(argv[1:])
    try:
        LitAlignCLI(args=args)
    except LitAlignError as e:
        print(f"\nlit_align: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Requeued as e:  # SLURM preemption (callbacks/requeue.py): checkpoint written, job requeued
        print(f"\nlit_align: {e}", file=sys.stderr, flush=True)
        sys.exit(0)


if __name__ == "__main__":
    main()
