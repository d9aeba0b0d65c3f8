"""Export a trained policy in Hugging Face format, from a checkpoint of any strategy or from a running fit.

    lit_align export logs/x/checkpoints/last.ckpt out_dir [--merge-lora]
    python -m lit_align.modeling.export logs/x/checkpoints/last.ckpt out_dir [--merge-lora]

The checkpoint may be a single file (single device, DDP, FSDP2 with save_distributed_checkpoint: false),
a sharded directory written by FSDP2 (ModelParallelStrategy) or FSDP (torch distributed checkpoint: only the
weights are read, never the optimizer state, and no process group is needed), or a DeepSpeed directory
(converted with DeepSpeed's zero_to_fp32; needs deepspeed). The policy is rebuilt from the checkpoint's
hyper-parameters (`policy`: name, dtype, LoRA), its weights loaded strictly (every key must match), and
saved with the tokenizer: the full model, the LoRA adapter, or with --merge-lora (or the run's
`policy.lora.merge_on_export`) the adapter merged into the base model. Frozen reference models and
optimizer state are not exported. A reward model (objectives/reward_model.py; its checkpoint says
`model_head: score`) is saved as an `AutoModelForSequenceClassification`, its LoRA adapter merged unless
--no-merge-lora (so that the directory reloads with plain transformers).

At the end of fit (callbacks/export.py), `export_module` does the same from the live module: under FSDP2
and FSDP every rank takes part in gathering the full state dict, which rank 0 saves.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from lit_align.errors import LitAlignError
from lit_align.modeling.models import LoraSpec, ModelSpec, load_model, load_tokenizer, save_hf
from lit_align.modeling.sharding import shards_weights

POLICY_PREFIX = "model."  # the objective's attribute holding the policy


def policy_spec(hparams: dict) -> ModelSpec:
    """The policy's ModelSpec from an objective's saved hyper-parameters (a dict from the CLI, or a dataclass)."""
    spec = hparams.get("policy")
    if spec is None:
        return ModelSpec()
    if isinstance(spec, ModelSpec):
        return spec
    known = {f.name for f in fields(ModelSpec)}
    spec = {k: v for k, v in dict(spec).items() if k in known}
    lora = spec.get("lora")
    if lora is not None and not isinstance(lora, LoraSpec):
        lora_known = {f.name for f in fields(LoraSpec)}
        spec["lora"] = LoraSpec(**{k: v for k, v in dict(lora).items() if k in lora_known})
    return ModelSpec(**spec)


def policy_state_dict(state_dict: dict) -> dict:
    """The policy's weights from an objective's state dict ("model.<hf key>" -> "<hf key>")."""
    return {k[len(POLICY_PREFIX):]: v for k, v in state_dict.items() if k.startswith(POLICY_PREFIX)}


def checkpoint_head(meta: dict) -> str:
    """The head the checkpoint's model has (models.HEADS): "score" for a reward model, else "lm"."""
    return meta.get("model_head", "lm")


def build_policy(spec: ModelSpec, state_dict: dict, head: str = "lm"):
    """An unsharded policy on CPU with the given weights (every key must match)."""
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer, head=head)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise LitAlignError(f"the checkpoint's weights do not fit the policy '{spec.name}': "
                            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                            f"(e.g. {unexpected[:2]})")
    return model, tokenizer


def _merge_flag(spec: ModelSpec, merge_lora: bool | None, head: str = "lm") -> bool:
    if merge_lora is None:  # a reward model's adapter alone would not reload as a sequence classifier by name
        return bool(spec.lora and (spec.lora.merge_on_export or head == "score"))
    if merge_lora and spec.lora is None:
        raise LitAlignError("--merge-lora: this policy has no LoRA adapter")
    return merge_lora


# -- from a checkpoint on disk ----------------------------------------------------------------------------


def _dcp_policy_weights(path: Path) -> tuple[dict, dict]:
    """Weights of a sharded (torch distributed checkpoint) directory, read into a freshly built policy's
    tensors: only the policy's entries are read (no optimizer state), without a process group."""
    import torch.distributed.checkpoint as dcp

    meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=False)
    spec = policy_spec(meta.get("hyper_parameters", {}))
    model = load_model(spec, load_tokenizer(spec), head=checkpoint_head(meta))
    target = {POLICY_PREFIX + k: v for k, v in model.state_dict().items()}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": intended, no process group
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"state_dict": target}, checkpoint_id=str(path), no_dist=True)
    return {k[len(POLICY_PREFIX):]: v for k, v in target.items()}, meta


def load_checkpoint_weights(path: str | Path) -> tuple[dict, dict]:
    """(policy state dict, checkpoint metadata with hyper_parameters) from any lit_align checkpoint."""
    path = Path(path)
    if not path.exists():
        raise LitAlignError(f"no checkpoint at {path}")
    if path.is_dir():
        if (path / "meta.pt").is_file() and (path / ".metadata").is_file():  # FSDP2 / FSDP sharded
            return _dcp_policy_weights(path)
        if (path / "checkpoint").exists() or (path / "latest").exists():  # DeepSpeed
            try:
                from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
                import deepspeed  # noqa: F401
            except ImportError:
                raise LitAlignError(f"{path} is a DeepSpeed checkpoint: converting it needs deepspeed "
                                    "(pip install deepspeed)") from None
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "fp32.ckpt")
                convert_zero_checkpoint_to_fp32_state_dict(str(path), out)
                ckpt = torch.load(out, map_location="cpu", weights_only=False)
            return policy_state_dict(ckpt["state_dict"]), ckpt
        raise LitAlignError(f"{path} is a directory but not a checkpoint lit_align knows (sharded FSDP/FSDP2 "
                            "or DeepSpeed)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:
        raise LitAlignError(f"cannot read the checkpoint {path}: {type(e).__name__}: {e}") from None
    if "state_dict" not in ckpt:
        raise LitAlignError(f"{path} holds no state_dict: not a Lightning checkpoint")
    return policy_state_dict(ckpt["state_dict"]), ckpt


def export_checkpoint(path: str | Path, out_dir: str | Path, merge_lora: bool | None = None) -> Path:
    """Write the policy of checkpoint `path` to `out_dir` in Hugging Face format."""
    weights, meta = load_checkpoint_weights(path)
    spec = policy_spec(meta.get("hyper_parameters", {}))
    head = checkpoint_head(meta)
    merge = _merge_flag(spec, merge_lora, head)
    model, tokenizer = build_policy(spec, weights, head)
    return save_hf(model, tokenizer, out_dir, merge_lora=merge)


# -- from the live module at the end of fit -----------------------------------------------------------------


def export_module(trainer, pl_module, out_dir: str | Path, merge_lora: bool | None = None) -> Path | None:
    """Save `pl_module`'s policy from a running trainer; call on every rank. Returns the path on rank 0."""
    spec = pl_module.policy_spec
    merge = _merge_flag(spec, merge_lora, pl_module.head)
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy) and getattr(trainer.strategy, "zero_stage_3", False):
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn("DeepSpeed ZeRO-3: the final model is not exported at the end of fit; export the "
                       "checkpoint instead: lit_align export <ckpt dir> <out dir>")
        return None
    if not shards_weights(trainer):
        if trainer.is_global_zero:
            return save_hf(pl_module.model, pl_module.tokenizer, out_dir, merge_lora=merge)
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    root = trainer.strategy.model  # FSDP: the wrapped objective; FSDP2: the objective itself
    full = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path = None
    if trainer.is_global_zero:
        model, tokenizer = build_policy(spec, policy_state_dict(full), pl_module.head)
        path = save_hf(model, tokenizer, out_dir, merge_lora=merge)
    return path
