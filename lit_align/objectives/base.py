"""Shared LightningModule plumbing for every objective: model loading, optimizer and schedule, exact loss
normalisation, and metrics under one naming scheme.

An objective implements `step(batch) -> {name: (sum, count)}`. The entry "loss" carries the gradient: its
sum is the summed per-unit loss of the micro-batch (units = target tokens for SFT, pairs for DPO, ...)
and its count the number of units. The base class returns the raw sum to Lightning and, once the
gradients of a whole optimizer step are in (every accumulated micro-batch, every device), rescales them
so that they are the gradient of

    sum over all micro-batches and devices of loss sums / global count of units

Lightning divides each micro-batch loss by `accumulate_grad_batches` and DDP/FSDP average over the
`world_size` devices, so the factor is accumulate * world_size / global count. Hence batch 8 and batch
4 x accumulation 2 give the same gradients, and so do 1 device with batch 8 and 2 devices with batch 4.
Every other entry is a metric, logged as `{split}/{name}` = global sum / global count:
per optimizer step for `train`, per epoch (torchmetrics, DDP-synchronised) for validation/test sets.

Evaluation batches of pairs (k = 2 continuations: chosen / matching, rejected / not matching) also get the
policy's own pair metrics, the same for every objective with an LM head (not the reward model's scalar head): {split}/logps/margins = mean of log π(y_w|x) -
log π(y_l|x), and {split}/logps/accuracy = share of pairs with log π(y_w|x) > log π(y_l|x) (on A/B contrast
sets: the behaviour-match rate). An objective that trains on one continuation (layout records "sft") reads such a set
when it says `kind: pair` (data/sources.py); its own metrics are then computed on the chosen continuation.
On A/B contrast sets (every record {question, answer_matching_behavior, answer_not_matching_behavior}: the data
module marks their batches `contrast`) they include CAA's metric (Rimsky et al. 2024), the same number that
`lit_align steer` reports (steering/vectors.py):

    {split}/ab/p_match = mean over items of p(m) / (p(m) + p(nm)) = σ(log π(m|x) - log π(nm|x)),

with π(m|x), π(nm|x) the probabilities of the whole matching / not-matching continuations (e.g. " (A)" + end).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import MeanMetric

from lit_align.layouts import LAYOUTS, Layout
from lit_align.moved import old_names
from lit_align.errors import LitAlignError
from lit_align.optim import OPTIMIZER_IMPLEMENTATIONS, adamw_with_schedule, lr_lambda  # noqa: F401 (lr_lambda: tests)
from lit_align.resume import COMPUTE_ONLY
from lit_align.modeling.logprobs import (TokenLogps, batch_logps, forward_logps, is_packed, shared_prompt_logps,
                                        shared_prompt_token_logps)
from lit_align.modeling.sharding import ranks_pass_together
from lit_align.modeling.models import LoraSpec, ModelSpec, check_model_spec, load_model, load_tokenizer, shard_model

Sums = dict[str, tuple[Tensor, Tensor]]

# Strategies refused for training, by class name (so that the check needs no deepspeed installed): DeepSpeed ZeRO
# reduces gradients into its own partitions, where the exact rescale of p.grad in on_before_optimizer_step and its
# non-finite check would not reach them. Not verified on a GPU yet; the loss cannot be scaled before backward
# instead, since the step's global count is known only once its last micro-batch is in.
UNVERIFIED_STRATEGIES = {"DeepSpeedStrategy": "DeepSpeed ZeRO keeps the reduced gradients in its own partitions"}


def check_strategy(strategy: object) -> None:
    """Raise a LitAlignError for a training strategy the exact loss normalisation is not verified under."""
    for cls in type(strategy).__mro__:
        if cls.__name__ in UNVERIFIED_STRATEGIES:
            raise LitAlignError(
                f"{type(strategy).__name__} is not supported for training: lit_align makes the loss an exact mean over "
                "the whole optimizer step by rescaling every p.grad once the step's gradients are in (objectives/"
                f"base.py), and {UNVERIFIED_STRATEGIES[cls.__name__]}, where that rescale and the non-finite "
                "check would miss them (not verified on a GPU). Shard with FSDP2 instead: --config "
                "configs/strategies/fsdp2.yaml (or fsdp.yaml).")


@dataclass
class OptimSpec:
    """AdamW with linear warmup, then cosine or linear decay (or constant)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    """Applied to weight matrices only (not to biases, norms)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    """Warmup as a fraction of all optimizer steps (used when warmup_steps is 0)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """cosine, linear or constant after warmup."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr."""
    implementation: Literal["foreach", "fused", "for_loop"] = "foreach"
    """How torch's AdamW runs its step (`OPTIMIZER_IMPLEMENTATIONS`): foreach (default: the same numbers, bit
    for bit, as for_loop), fused (fewer passes and no temporaries; differs in the last bits), for_loop."""

    def uses_total_steps(self) -> bool:
        """Whether the learning rate at a step depends on the run's total number of steps (a decay to the end,
        or a warmup given as a ratio): then a resumed run with another max_steps follows another schedule."""
        return self.schedule != "constant" or (not self.warmup_steps and self.warmup_ratio > 0)


def check_optim(spec: OptimSpec) -> None:
    """Refuse optimizer settings that cannot train (and warn about a learning rate of 0), before any model load."""
    if spec.implementation not in OPTIMIZER_IMPLEMENTATIONS:
        raise LitAlignError(f"optim.implementation must be one of {', '.join(OPTIMIZER_IMPLEMENTATIONS)}, not "
                            f"'{spec.implementation}'")
    if spec.schedule not in ("cosine", "linear", "constant"):
        raise LitAlignError(f"optim.schedule must be cosine, linear or constant, not '{spec.schedule}'")
    if not math.isfinite(spec.lr) or spec.lr < 0:
        raise LitAlignError(f"optim.lr must be a finite number >= 0, not {spec.lr}")
    if spec.lr == 0:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn("optim.lr is 0: the weights will not change (only evaluation and probes are meaningful)")
    if spec.warmup_steps < 0:
        raise LitAlignError(f"optim.warmup_steps must be >= 0, not {spec.warmup_steps}")
    if not 0 <= spec.warmup_ratio <= 1:
        raise LitAlignError(f"optim.warmup_ratio is a fraction of all optimizer steps: it must be in [0, 1], not "
                            f"{spec.warmup_ratio}")
    if not 0 <= spec.min_lr_ratio <= 1:
        raise LitAlignError(f"optim.min_lr_ratio must be in [0, 1], not {spec.min_lr_ratio}")
    if spec.weight_decay < 0:
        raise LitAlignError(f"optim.weight_decay must be >= 0, not {spec.weight_decay}")
    if not all(0 <= b < 1 for b in spec.betas) or spec.eps <= 0:
        raise LitAlignError(f"optim.betas must be in [0, 1) and optim.eps > 0, not betas {list(spec.betas)}, eps "
                            f"{spec.eps}")


def allow_in_checkpoints(*classes: type) -> None:
    """Let torch's weights-only loader (Lightning's default) read these config dataclasses, which the
    objectives save in their hyperparameters, so `trainer.fit(ckpt_path=...)` works in Python too."""
    torch.serialization.add_safe_globals(list(classes))
    # checkpoints written before the package took its folders name some classes by their old module path
    torch.serialization.add_safe_globals([(cls, name) for cls in classes for name in old_names(cls)])


allow_in_checkpoints(ModelSpec, LoraSpec, OptimSpec)


class Objective(LightningModule):
    head = "lm"
    """What the model puts on the decoder (models.HEADS): "lm", a causal LM; "score", a scalar (reward model)."""
    compute_only_settings: frozenset = COMPUTE_ONLY
    """Settings (hyperparameter names, at any depth) that change how the numbers are computed, not the numbers: a
    resume may change them (resume.py). A subclass adds its own: `Objective.compute_only_settings | {...}`."""
    added_settings: dict = {}
    """Settings added after checkpoints were written -> the value their absence meant: a checkpoint without the key
    resumes under that value (resume.py)."""
    allow_empty_steps: bool = False
    """An optimizer step with nothing in its loss (count 0) is skipped instead of refused: online objectives, whose
    samples may all tie or all be masked. Offline objectives refuse it (an empty mask is a data error)."""
    removed_settings: dict = {}
    """Settings older checkpoints hold that the objective no longer has -> the only value they could have had there:
    a checkpoint holding that value resumes (resume.py); any other value is refused, as a changed setting."""
    progress_metrics: tuple = ("loss",)
    """The train/ metrics shown on the progress bar (online RL adds its reward)."""

    def __init__(self, policy: ModelSpec | None = None, optim: OptimSpec | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.policy_spec = policy or ModelSpec()
        self.optim_spec = optim or OptimSpec()
        check_optim(self.optim_spec)
        check_model_spec(self.policy_spec, "policy")
        self.tokenizer = load_tokenizer(self.policy_spec)
        self.model: torch.nn.Module | None = None
        # the optional reference model (reference.py): an objective that compares with π_ref builds it in its
        # constructor (build_reference); the base class wires it to the policy and prepares it (its cache)
        self.reference = None
        self.eval_metrics = torch.nn.ModuleDict()  # "{split}/{name}" -> MeanMetric, created on first use
        self._step_sums: dict[str, Tensor] = {}
        self._step_counts: dict[str, Tensor] = {}

    # -- the batch layout (layouts.py): what the data module collates and how log-probs come out of its batches --
    def layout_name(self) -> str:
        """The name of this objective's batch layout (layouts.py LAYOUTS), from its own options: each objective
        declares it here, once (no assignment to override). The CLI hands `layout` to the data module, and an
        objective with a reference hands it to the reference."""
        return "sft"

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.layout_name()]

    @property
    def train_sampling_weights(self) -> Callable | None:
        """What the data module draws training examples by, handed to it with the layout (`connect`): None, the
        sampler's uniform order (IW-SFT's mode resample gives its importance weights)."""
        return None

    @property
    def repeat_steps(self) -> int:
        """How many optimizer steps in a row see each step's training batches, handed to the data module with the
        layout (`connect`): 1, or GRPO's num_iterations (it updates several times on one rollout)."""
        return 1

    # -- model ----------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is None:
            self.model = load_model(self.policy_spec, self.tokenizer, head=self.head)
            if self.device_mesh is not None:  # FSDP2 (ModelParallelStrategy): shard the decoder layers, then the model
                shard_model(self.model, self.device_mesh)
        if self.reference is not None:  # (its batches are in this objective's layout)
            self.reference.configure(self.model, self.policy_spec, self.tokenizer, self.layout)

    def step(self, batch: dict) -> Sums:
        raise NotImplementedError

    # -- what must be computed over the data before any batch (a reference cache, importance weights) ----------
    def prepare(self, datamodule, *, from_policy: bool = True, precision: str = "32-true",
                forward_context: Callable = nullcontext) -> None:
        """Called before fitting, validating or testing, once the data is set up: the reference's own preparation (a
        cache is computed here, once; the other references have nothing to prepare). `from_policy`: the policy still
        holds its starting weights (not resumed, not yet trained). A no-op once prepared."""
        if self.reference is not None:
            self.reference.prepare(self.model, datamodule, from_policy=from_policy, precision=precision,
                                   forward_context=forward_context)

    def _prepare(self) -> None:
        trainer = self.trainer
        self.prepare(trainer.datamodule, from_policy=trainer.global_step == 0 and trainer.ckpt_path is None,
                     precision=str(trainer.precision), forward_context=trainer.precision_plugin.forward_context)

    def on_fit_start(self) -> None:
        self._prepare()

    def on_validation_start(self) -> None:
        self._prepare()  # lit_align validate runs no fit

    def on_test_start(self) -> None:
        self._prepare()

    # -- training: exact normalisation over the optimizer step --------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_strategy(self.trainer.strategy)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        sums = self.step(batch)
        loss_sum, count = sums["loss"]
        for name, (s, c) in sums.items():
            self._step_sums[name] = self._step_sums.get(name, 0) + s.detach().float()
            self._step_counts[name] = self._step_counts.get(name, 0) + torch.as_tensor(c, device=self.device).float()
        return loss_sum

    def on_before_optimizer_step(self, optimizer) -> None:
        names = sorted(self._step_sums)
        bad_grads = self._nonfinite_grads()  # this rank's gradients holding NaN/inf (rides on the all-reduce)
        local = torch.stack([self._step_sums[n] for n in names] + [self._step_counts[n] for n in names] + [bad_grads])
        total = self.trainer.strategy.reduce(local.clone(), reduce_op="sum")  # one all-reduce per step
        sums, counts = total[: len(names)], total[len(names): 2 * len(names)]
        self._step_sums.clear()
        self._step_counts.clear()
        if not torch.isfinite(sums[names.index("loss")]) or total[-1] > 0:
            self._skip_or_stop("loss" if not torch.isfinite(sums[names.index("loss")]) else "gradients")
            return
        self._finite_step()
        count = counts[names.index("loss")]
        if count <= 0 and not self.allow_empty_steps:
            raise LitAlignError("An optimizer step saw no loss targets (zero target tokens / pairs); refusing to "
                                "average over nothing. Check max_length and the data summary above.")
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / count if count > 0 else 0.0
        for p in self.parameters():
            if p.grad is not None and count > 0:
                p.grad.mul_(scale)
            elif count <= 0:  # nothing to learn from this step's samples (allow_empty_steps): no update
                p.grad = None
        for n, s, c in zip(names, sums, counts):
            if c > 0:
                self.log(f"train/{n}", s / c, on_step=True, on_epoch=False, prog_bar=n in self.progress_metrics,
                         rank_zero_only=True)
        # the learning rate of this step (one curve: every parameter group follows the same schedule)
        self.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=True, on_epoch=False, rank_zero_only=True)

    # -- non-finite loss or gradients (callbacks/nonfinite.py holds the policy) ----------------------
    def _nonfinite_guard(self):
        return next((cb for cb in self.trainer.callbacks if hasattr(cb, "on_nonfinite_step")), None)

    def _nonfinite_grads(self) -> Tensor:
        """Number of this rank's gradients holding NaN or inf (0 under a loss scaler: inf is its business)."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return torch.zeros((), device=self.device)
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # FSDP2: this rank's shard
                 for p in self.parameters() if p.grad is not None]
        grads = [g for g in grads if g.numel()]
        if not grads:
            return torch.zeros((), device=self.device)
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)  # NaN/inf propagate; no grad-sized temporaries
        return (~torch.isfinite(torch.stack(norms))).sum().float().to(self.device)

    def _skip_or_stop(self, what: str) -> None:
        """Same decision on every rank (from all-reduced numbers): the guard raises to stop, or the step's
        gradients are dropped so that the optimizer leaves weights and its state untouched."""
        guard = self._nonfinite_guard()
        if guard is None:
            raise LitAlignError(f"non-finite {what} at optimizer step {self.trainer.global_step}; stopping.")
        guard.on_nonfinite_step(self.trainer, self, what)
        for p in self.parameters():
            p.grad = None

    def _finite_step(self) -> None:
        guard = self._nonfinite_guard()
        if guard is not None:
            guard.on_finite_step()

    # -- evaluation: torchmetrics aggregate over the epoch and across devices -----------------------
    def eval_sums(self, batch: dict) -> Sums:
        """The metrics of one evaluation batch: the objective's own, plus the policy's pair metrics on pairs."""
        if batch.get("num_continuations", 1) != 2:
            return self.step(batch)
        token_sums = getattr(self, "token_sums", None)
        if self.layout.records == "sft" and token_sums is not None and self.head == "lm" and not is_packed(batch):
            # SFT-type metrics and the pair metrics from ONE forward pass over both answers (each prompt once):
            # out (2B rows, continuation-major); its rows [0:B] are the chosen answers the step would score
            out = (shared_prompt_token_logps if self.shares_prompts() else forward_logps)(self.model, batch, True)
            B = batch["context_tokens"].shape[0]
            chosen = TokenLogps(out.logps[:B], out.mask[:B], out.correct[:B])
            logps = out.sequence.view(2, B).T                                # (B, 2)
            return {**pair_sums(logps, batch.get("contrast", False)), **token_sums(first_continuation(batch), chosen)}
        sums = self.step(first_continuation(batch) if self.layout.records == "sft" else batch)
        # pair objectives compute them in `step` from their own forward pass; a model without an LM head has none
        if "logps/accuracy" not in sums and self.head == "lm":
            # (B, 2); padded pairs run each prompt once (an A/B item's question is most of its tokens)
            shared = self.shares_prompts() and not is_packed(batch)
            logps = (shared_prompt_logps if shared else batch_logps)(self.model, batch).logps
            sums = {**pair_sums(logps, batch.get("contrast", False)), **sums}
        return sums

    def shares_prompts(self) -> bool:
        """Whether evaluation may run each pair's prompt once (logprobs.shared_prompt_logps). That path runs one
        or two forward passes depending on the batch; under a sharded strategy (FSDP, ModelParallel) on several
        ranks every forward pass gathers weights from all of them, so ranks deciding apart would wait on each
        other for ever: there evaluation keeps the padded rows (one pass on every rank)."""
        trainer = getattr(self, "_trainer", None)
        return trainer is None or not ranks_pass_together(trainer)

    def _eval_step(self, batch: dict) -> None:
        split = batch.get("split", "val")
        for name, (s, c) in self.eval_sums(batch).items():
            key = f"{split}/{name}"
            mkey = key.replace("/", "|").replace(".", "_")
            if mkey not in self.eval_metrics:
                self.eval_metrics[mkey] = MeanMetric().to(self.device)
            metric = self.eval_metrics[mkey]
            c = torch.as_tensor(c, device=self.device).float()
            if c > 0:
                metric.update(s.detach().float() / c, weight=c)
            self.log(key, metric, on_step=False, on_epoch=True, add_dataloader_idx=False,
                     prog_bar=key == "val/loss", metric_attribute=f"eval_metrics.{mkey}")

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    # -- predict: generations for the data module's prompts (lit_align predict) -------------------------
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """One JSONL row per prompt of the batch (callbacks/generations.py: GenerationWriter has the options)."""
        # the callback that holds predict's options and writes its rows (callbacks/generations.py GenerationWriter,
        # which the CLI always adds): found by what it does, so that no objective depends on a callback
        writer = next((cb for cb in self.trainer.callbacks if callable(getattr(cb, "predict_rows", None))), None)
        if writer is None:
            raise LitAlignError("predict needs lit_align.callbacks.GenerationWriter among the trainer's callbacks "
                                "(its generation options; `lit_align predict` adds it)")
        return writer.predict_rows(self, batch, batch_idx)

    # -- optimizer -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        spec = self.optim_spec
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        optimizer, scheduler = adamw_with_schedule(
            self.parameters(), lr=spec.lr, total=total, warmup=spec.warmup_steps or int(spec.warmup_ratio * total),
            schedule=spec.schedule, min_ratio=spec.min_lr_ratio, weight_decay=spec.weight_decay, betas=spec.betas,
            eps=spec.eps, implementation=spec.implementation)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def pair_sums(logps: Tensor, contrast: bool = False) -> Sums:
    """Policy pair metrics from (B, 2) sequence log-probs (chosen / matching first), as (sum, count) over pairs;
    with `contrast` (an A/B contrast set) also CAA's ab/p_match = σ(log π(m) - log π(nm)) per item."""
    chosen, rejected = logps[:, 0].detach(), logps[:, 1].detach()
    n = chosen.shape[0]
    sums = {
        "logps/chosen": (chosen.sum(), n),
        "logps/rejected": (rejected.sum(), n),
        "logps/margins": ((chosen - rejected).sum(), n),
        "logps/accuracy": ((chosen > rejected).float().sum(), n),
    }
    if contrast:
        sums["ab/p_match"] = (torch.sigmoid(chosen - rejected).sum(), n)
    return sums


def first_continuation(batch: dict) -> dict:
    """The batch of the first continuation only (rows [0:B] of collate.py's continuation-major layout)."""
    B = batch["index"].shape[0]
    rows = {k: batch[k][:B] for k in ("input_ids", "attention_mask", "labels")}
    return {**batch, **rows, "num_continuations": 1}
