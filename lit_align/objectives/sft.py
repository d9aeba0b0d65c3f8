"""Supervised fine-tuning on completions (the prompt is masked).

    L(θ) = - Σ_i Σ_{t ∈ completion_i} log π_θ(y_t | x_i, y_<t)  /  Σ_i |completion_i|

a mean over the target tokens of the whole optimizer step: all accumulated micro-batches on all devices
(see objectives/base.py), so batch 8 and batch 4 x accumulation 2 give the same gradient. Prompt and
shared-prefix tokens are context only; the end token is a target for full answers, absent for partial
ones. Log-probs are computed in fp32 (logprobs.py).

Packing (`packed: true`): each micro-batch's B examples (the B the sampler drew, as unpacked) are laid one after
another into R <= B rows of at most `data.pack_length` (default `data.max_length`) tokens, the fewest token
slots first (data/collate.py: pack_rows, collate_packed), each example attending only to itself (a block
causal 4D mask under sdpa/eager; padding-free varlen attention from position ids under flash-attention) with
its positions restarting at 0. A "batch" is still B examples: the rows are only their arrangement, so the sums,
counts, examples per optimizer step, sampler and resume are those of the unpacked run, and the losses and
gradients equal the unpacked ones up to float rounding (tests/test_packing.py); less compute goes to padding.

Metrics: {split}/loss (mean NLL per target token), {split}/token_accuracy (greedy next token = target),
{split}/logps (mean log-prob per sequence).
"""

from __future__ import annotations

from lit_align.modeling.logprobs import TokenLogps, batch_token_logps
from lit_align.losses.likelihood import nll
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import Objective, OptimSpec, Sums


class SFT(Objective):
    added_settings = {"packed": False}  # (SFT and IW-SFT gained `packed`)

    def __init__(self, policy: ModelSpec | None = None, optim: OptimSpec | None = None, packed: bool = False):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            packed: several examples per row, each attending only to itself (module docstring): the same
                losses and gradients with little padding. Rows of at most data.pack_length tokens.
        """
        super().__init__(policy, optim)
        self.packed = packed

    def layout_name(self) -> str:
        return "packed_sft" if self.packed else "sft"

    def step(self, batch: dict) -> Sums:
        return self.token_sums(batch, batch_token_logps(self.model, batch, with_accuracy=True))

    def token_sums(self, batch: dict, out: TokenLogps) -> Sums:
        """The metrics of `batch` (one continuation per example) from its target tokens' log-probs and greedy hits
        `out` ((B, L) one row per example, either layout); evaluation on pairs hands in the first continuation's
        rows of the pair's forward pass (objectives/base.py's eval_sums)."""
        loss_sum, tokens = nll(out.logps, out.mask)
        n_tokens = tokens.sum()
        return {
            "loss": (loss_sum.sum(), n_tokens),
            "token_accuracy": ((out.correct & out.mask).sum(), n_tokens),
            "logps": (out.sequence.detach().sum(), out.sequence.shape[0]),
        }
