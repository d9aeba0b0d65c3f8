"""Trained reward models (objectives/reward_model.py's RewardModel, exported or checkpointed): loading one and
scoring sequences with it. `lit_align score` scores files with them; online RL uses one as a reward
(eval/rewards.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lit_align.errors import LitAlignError


def sequence_rewards(model: torch.nn.Module, batch: dict) -> Tensor:
    """The scalar reward of every row of a padded batch (collate.py), (N,) fp32: the sequence-classification
    model's score at the last non-pad token (transformers' own pooling, hence the exported model's numbers)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits.squeeze(-1).float()                                   # (N, 1) -> (N,)


def load_reward_model(name: str, what: str = "--model"):
    """(model in eval mode, tokenizer) of an exported reward model (a directory or hub name) or of a lit_align
    RewardModel checkpoint (file, or sharded directory). `what`: how errors name it (the option that gave it)."""
    from lit_align.modeling.export import build_policy, checkpoint_head, load_checkpoint_weights, policy_spec
    from lit_align.modeling.models import ModelSpec, load_model, load_tokenizer, missing_model

    path = Path(name).expanduser()
    is_checkpoint = path.is_file() or (path / "meta.pt").is_file() or (path / "latest").exists()
    if is_checkpoint:
        weights, meta = load_checkpoint_weights(path)
        if checkpoint_head(meta) != "score":
            raise LitAlignError(f"{what} {name}: this checkpoint is of a causal LM, not of a reward model "
                                "(lit_align.objectives.RewardModel): it has no score head")
        model, tokenizer = build_policy(policy_spec(meta.get("hyper_parameters", {})), weights, head="score")
        return model.eval(), tokenizer
    from transformers import AutoConfig

    spec = ModelSpec(name=name)
    problem = missing_model(name)  # (a path that does not exist: at once, not after the hub's retries)
    if problem is None:
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as e:
            problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        raise LitAlignError(f"{what} {name}: not a checkpoint, and no Hugging Face model can be read there "
                            f"({problem})")
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or config.num_labels != 1:
        raise LitAlignError(f"{what} {name} is not a reward model (architectures {architectures}, num_labels "
                            f"{config.num_labels}): give a directory exported from a RewardModel run "
                            "(<log dir>/hf_model) or its checkpoint")
    tokenizer = load_tokenizer(spec)
    return load_model(spec, tokenizer, head="score").eval(), tokenizer
