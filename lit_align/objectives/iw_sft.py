"""Importance-reweighted SFT: train as if every completion had been equally likely under the starting model.

Plain SFT on target completions moves the model mostly where it was already confident. Here example i
(prompt x_i, completion y_i of n_i target tokens) gets a weight from the reference π_ref (the starting model
by default; weights.py):

    u_i = π_ref(y_i | x_i)^(-α)           (length_normalize: the per-token geometric mean π_ref(y_i|x_i)^(1/n_i))
    w_i = |S| u_i / Σ_{j∈S} u_j           self-normalised to mean 1 over the scope S ∋ i: the whole split
                                          (default), the group of completions sharing a prompt, or the micro-batch
    w_i ← min(w_i, M)                     clipped at M = max_ratio times the mean; the unclipped weights are
                                          rescaled so the mean stays exactly 1

With π_ref(A|x) = 0.8, π_ref(B|x) = 0.2 and α = 1, B weighs 4x as much as A (w = 0.4, 1.6); α = 0 is plain SFT;
α in between tempers. A 1000x gap in confidence gives at most the ratio M. The weights are constants (no
gradient), computed before training from every example of each split (so an example's weight never depends
on which batch it lands in, except with normalize: batch), looked up by the batch's `split` and `index`,
saved in checkpoints, and, with `refresh_every: N`, recomputed every N optimizer steps from the CURRENT
policy (π_θ replaces π_ref in u_i; training weights only). `weights.source: data` takes u_i from the records'
`weight` field instead.

mode: loss ("multiply the update"). Over the optimizer step (every accumulated micro-batch, every device):

    L(θ) = Σ_i w_i · Σ_t -log π_θ(y_it | x_i, y_i<t)  /  Σ_i n_i

The count is the plain number of target tokens Σ n_i, the same as SFT's, not the weighted Σ w_i n_i, because:
  * w ≡ 1 (α = 0) gives exactly SFT's loss and gradients;
  * an example's share of the update, w_i / Σ n, does not depend on the weights of the examples it happens to
    share a step with. Dividing by Σ w_j n_j would renormalise the weights within each step: a heavy example
    among heavy ones would count for less than among light ones, undoing the split-wide normalisation and
    making the result depend on how examples fall into batches and on accumulation / device count;
  * the weights have mean 1 over their scope, so on average Σ w_i n_i ≈ Σ n_i: the update has SFT's size and
    SFT's learning rate carries over.
It goes through the base class's (sum, count) mechanism (objectives/base.py), so it is exact under gradient
accumulation and across devices: batch 8 equals batch 4 x accumulation 2.

mode: resample ("train on it several times"). Each epoch draws len(train) examples with replacement, example
i with probability w_i / Σ w (data/samplers.py: WeightedResampler, seeded, resumable), and the loss on them is
plain SFT (each drawn example weight 1). Its expected gradient points the same way as the loss mode's; the
scale differs by Σ_i w_i n_i / Σ_i n_i (1 when all completions have the same length, e.g. A/B answers).
It has no single heavy step, but repeats some examples and never shows others (the ESS counts how many
effectively remain). Evaluation sets are always weighted by the loss (their `loss` is the same estimator).

Caveat: weights fixed at the start do not know when to stop. If the model can only move a shared preference
(e.g. a letter prior on A/B questions), the weighted optimum mirrors the starting bias: log-odds α·Δ the other
way for a starting gap of Δ nats (Δ/n per token with length_normalize). The cap M does not bind when many
examples are disfavoured (their weights are then only ~2x the mean). `refresh_every` (weights from the
current policy), α < 1 or length_normalize limit the overshoot (scripts/ab_experiment.py shows it).

Policy-ratio variant (weights.source: policy_ratio; Qin & Springenberg 2025, "Supervised Fine Tuning on Curated
Data is Reinforcement Learning"): w_i = clamp(exp(mean_t(log π_θ(y_it|..) - log π_ref(y_it|..))), 0, 16),
detached, from the current policy in the same forward pass (mode loss only, normalize none or batch). It is
1 at the start (π_θ = π_ref) and then UP-weights the completions the policy already prefers more than the
reference did (tightening SFT's lower bound on an RL objective), the opposite direction from π_ref^(-α),
which up-weights what the reference disfavoured.

Metrics: {split}/loss (the weighted NLL per target token, as above), {split}/nll (the unweighted NLL per target
token: SFT's loss), {split}/token_accuracy, {split}/logps (SFT's), and {split}/weights/mean, /max, /ess
((Σw)² / (n Σw²)), /clipped_fraction over the examples of the optimizer step (train) or of the evaluation set
(per epoch). In resample mode train/weights/* describe the sampling weights of the whole training set.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Callable, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import TokenLogps, batch_token_logps
from lit_align.losses.likelihood import nll, weighted_nll
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.sft import SFT
from lit_align.objectives.reference import ReferenceSpec, build_reference, policy_split_logps, reference_split_logps
from lit_align.weights import (ImportanceWeights, WeightSpec, data_log_weights, group_ids, normalized_weights,
                               policy_ratio_weights)



class WeightStats(Metric):
    """mean, max, effective sample size and clipped fraction of the weights seen (DDP-synchronised)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clipped", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("max", torch.tensor(float("-inf"), dtype=torch.float64), dist_reduce_fx="max")

    def update(self, weights: Tensor, clipped: Tensor) -> None:
        w = weights.detach().double()
        self.total += w.sum()
        self.total_sq += (w ** 2).sum()
        self.count += w.numel()
        self.clipped += clipped.double().sum()
        self.max = torch.maximum(self.max, w.max()) if w.numel() else self.max

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        return {"mean": (self.total / n).float(), "max": self.max.float(),
                "ess": (self.total ** 2 / (n * self.total_sq).clamp(min=1e-300)).float(),
                "clipped_fraction": (self.clipped / n).float()}


class IWSFT(SFT):
    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        weights: WeightSpec | None = None,
        mode: Literal["loss", "resample"] = "loss",
        reference: ReferenceSpec | None = None,
        packed: bool = False,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or builtin:tiny / builtin:small), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            weights: how the importance weights are computed: source (reference, data, policy_ratio), alpha,
                length_normalize, normalize (dataset, group, batch, none), max_ratio, refresh_every.
            mode: loss (scale each example's NLL by its weight) or resample (draw examples in proportion to
                their weight, plain NLL).
            reference: where π_ref comes from (source reference / policy_ratio): mode copy (a frozen model),
                disable_adapter (the LoRA policy's base) or cache (a precomputed file, no model in memory).
            packed: several examples per row, as SFT's (objectives/sft.py): the same per-example NLL sums, so the
                weights apply per example exactly as unpacked; the reference and the policy-ratio weights read
                the packed batches too.
        """
        super().__init__(policy, optim, packed)
        self.weight_spec = weights or WeightSpec()
        self.weight_spec.check(mode)  # every option and combination, once (weights.py)
        spec = self.weight_spec
        self.mode, self.resample = mode, mode == "resample"
        self.importance = ImportanceWeights(spec)
        # the reference reads SFT's layout (packed_sft: packed rows, or padded pair evaluation sets)
        self.reference = build_reference(reference) if spec.needs_reference else None
        self.weight_metrics = torch.nn.ModuleDict()  # w_<split> -> WeightStats

    # -- reference and weights --------------------------------------------------------------------------
    @property
    def train_sampling_weights(self) -> Callable | None:
        # mode resample: the examples are drawn ∝ w (read when the epoch's draw begins, after on_fit_start)
        return self._sampling_weights if self.resample else None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.resample and stage == "fit":
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "train_weights"):
                raise LitAlignError("mode: resample draws training examples through the data module's sampler: "
                                    "fit with an AlignDataModule")
            if dm.train_weights is None:
                raise LitAlignError("mode: resample draws the training examples by the importance weights: connect "
                                    "the data module with them, datamodule.connect(objective.tokenizer, "
                                    "objective.layout, objective.train_sampling_weights) (the lit_align CLI does)")

    def _sampling_weights(self) -> Tensor:
        table = self.importance.tables.get("train")
        if table is None or table.weights is None:
            raise LitAlignError("mode: resample: the training weights are not computed yet (on_fit_start does it)")
        return table.weights

    def prepare(self, datamodule, *, from_policy: bool = True, precision: str = "32-true",
                forward_context: Callable = nullcontext) -> None:
        """Weight tables for every split of `datamodule` that has none yet (restored ones are kept).
        `from_policy`: the policy still holds its starting weights (a reference cache may then use it)."""
        spec = self.weight_spec
        if datamodule is None or not hasattr(datamodule, "splits"):
            raise LitAlignError("importance-reweighted SFT computes its weights over the data module's splits: "
                                "use an AlignDataModule")
        splits = datamodule.splits
        missing = [n for n in splits if n not in self.importance.tables] if not spec.per_step else []
        if self.reference is not None and (missing or spec.per_step):
            self.reference.prepare(self.model, datamodule, from_policy=from_policy, precision=precision,
                                   forward_context=forward_context)
        for name in missing:
            examples = splits[name].examples
            groups = group_ids([ex.group for ex in examples])
            if spec.from_reference:
                logps, tokens = reference_split_logps(self.reference, self.model, datamodule, name, forward_context)
                self.importance.build_from_reference(name, logps[:, 0], tokens[:, 0], groups)  # the first continuation
            else:
                weights = torch.tensor([1.0 if ex.weight is None else ex.weight for ex in examples], dtype=torch.float64)
                if not (weights > 0).any():
                    raise LitAlignError(f"weights.source: data: every record `weight` of split '{name}' is 0 "
                                        f"({len(examples)} examples), so every loss would be 0 and nothing learnt: "
                                        "give some records a weight > 0 (a missing weight counts as 1)")
                self.importance.build(name, data_log_weights(weights), groups)
        for name in sorted(splits):  # the same metrics on every rank (their compute() is a collective)
            self._weight_metric(name)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        n, step = self.weight_spec.refresh_every, self.trainer.global_step
        table = self.importance.tables.get("train")
        if n and step and step % n == 0 and table is not None and table.computed_at != step:
            logps, tokens = policy_split_logps(self.model, self.layout.logps, self.trainer.datamodule, "train",
                                               self.trainer.precision_plugin.forward_context)
            self.importance.build_from_reference("train", logps[:, 0], tokens[:, 0], table.groups, computed_at=step)

    def batch_weights(self, batch: dict, policy_logps: Tensor | None = None,
                      tokens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B,) weights and clipped flags of a batch's examples (constants). policy_ratio needs the policy's
        (B,) sequence log-probs and token counts of the batch."""
        spec = self.weight_spec
        if not spec.per_step:
            return self.importance.lookup(batch.get("split", "train"), batch["index"])
        ref = self.reference.matching(batch, self.model, tokens[:, None])   # (B, k) constants; the first is read
        w, clipped = policy_ratio_weights(policy_logps, ref.logps[:, 0], tokens, spec.policy_ratio_max)
        if spec.per_batch:
            w, also = normalized_weights(w.double().log(), None, spec.max_ratio)
            clipped = clipped | also
        return w.to(policy_logps.device), clipped.to(policy_logps.device)

    # -- loss -------------------------------------------------------------------------------------------
    def step(self, batch: dict) -> Sums:
        return self.token_sums(batch, batch_token_logps(self.model, batch, with_accuracy=True))

    def token_sums(self, batch: dict, out: TokenLogps) -> Sums:
        """(out: (B, L) fp32, with gradient, either layout; SFT.token_sums)"""
        split = batch.get("split", "train")
        w, clipped = self.batch_weights(batch, out.sequence, out.tokens)   # (B,) constants
        resampled = self.resample and split == "train"    # drawn ∝ w already: weight 1 in the loss
        weighted, tokens = weighted_nll(out.logps, out.mask, torch.ones_like(w) if resampled else w)
        plain, _ = nll(out.logps.detach(), out.mask)
        if not resampled:
            self._weight_metric(split).update(w, clipped)
        n_tokens = tokens.sum()
        return {
            "loss": (weighted.sum(), n_tokens),
            "nll": (plain.sum(), n_tokens),
            "token_accuracy": ((out.correct & out.mask).sum(), n_tokens),
            "logps": (out.sequence.detach().sum(), out.sequence.shape[0]),
        }

    # -- weight metrics ---------------------------------------------------------------------------------
    def _weight_metric(self, split: str) -> WeightStats:
        key = f"w_{split}"  # a module name may not be "train" (nn.Module.train)
        if key not in self.weight_metrics:
            self.weight_metrics[key] = WeightStats().to(self.device)
        return self.weight_metrics[key]

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.resample:
            stats = self.importance.stats("train")
        else:
            metric = self._weight_metric("train")
            stats = metric.compute()
            metric.reset()
        for name, value in stats.items():
            self.log(f"train/weights/{name}", value, on_step=True, on_epoch=False, rank_zero_only=True)

    def _log_eval_weights(self, stage: str) -> None:
        for key in sorted(self.weight_metrics):
            split = key.removeprefix("w_")
            if not split.startswith(stage):
                continue
            metric = self.weight_metrics[key]
            with warnings.catch_warnings():  # a rank may have seen none of this set: compute() still syncs
                warnings.simplefilter("ignore")
                stats = metric.compute()
            seen = bool(torch.isfinite(stats["max"]))  # -inf: no rank saw a weight
            metric.reset()
            if seen:
                for name, value in stats.items():
                    self.log(f"{split}/weights/{name}", value, on_step=False, on_epoch=True, add_dataloader_idx=False,
                             rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_weights("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_weights("test")

    # -- checkpoints: the weights in use (a refreshed table cannot be recomputed on resume) ----------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["importance_weights"] = self.importance.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "importance_weights" in checkpoint:
            self.importance.load_state_dict(checkpoint["importance_weights"])
