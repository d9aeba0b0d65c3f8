"""Importance weights for importance-reweighted SFT (objectives/iw_sft.py): pure tensor functions, plus
`ImportanceWeights`, the per-split table of weights an objective looks examples up in by `index`.

From reference log-probs (source `reference`): for example i with continuation y_i of n_i target tokens,

    log u_i = -α · log π_ref(y_i | x_i)                  (sequence probability), or
    log u_i = -α · log π_ref(y_i | x_i) / n_i            (length_normalize: per-token geometric mean)

so u_i = π_ref(y_i|x_i)^(-α): α = 0 gives u ≡ 1 (plain SFT), α = 1 makes every completion count as if it
had been equally likely under π_ref. Then, within each normalisation scope S (the whole split, the group
of completions sharing a prompt, or the micro-batch):

    w_i = |S| · u_i / Σ_{j∈S} u_j                         (self-normalised: mean 1 over S; in log space)
    w_i ← min(w_i, M), the others rescaled to keep mean 1 (clipped at M times the mean, "water-filling")

Clipping is iterated until it is consistent: the clipped examples sit exactly at M, the rest keep their
ratios to one another and the scope mean stays exactly 1 (M ≥ 1 always admits such a solution; M = 1 gives
uniform weights). An example is `clipped` when it sits at the cap.

From the data (source `data`): u_i = the record's `weight` (1 when it has none), then the same scope
normalisation and clipping.

The policy-ratio variant (Qin & Springenberg 2025, "Supervised Fine Tuning on Curated Data is Reinforcement
Learning"): w_i = clamp(exp(mean_t(log π_θ - log π_ref)), 0, W) with W = 16, detached, per batch from the
current policy: `policy_ratio_weights`.
"""

from __future__ import annotations

from typing import Literal

from dataclasses import dataclass

import torch
from torch import Tensor

from lit_align.errors import LitAlignError

SOURCES = ("reference", "data", "policy_ratio")
SCOPES = ("dataset", "group", "batch", "none")
MODES = ("loss", "resample")
"""How IW-SFT uses the weights (objectives/iw_sft.py): scale each example's NLL, or draw examples ∝ weight."""


# -- pure functions -----------------------------------------------------------------------------------


def reference_log_weights(ref_logps: Tensor, tokens: Tensor, alpha: float, length_normalize: bool = False) -> Tensor:
    """log u = -α log π_ref(y|x) (or its per-token mean): (n,) fp64 unnormalised log-weights.

    ref_logps (n,) sequence log-probs summed over target tokens; tokens (n,) target-token counts."""
    logp = ref_logps.double()
    if length_normalize:
        logp = logp / tokens.double().clamp(min=1)
    return -alpha * logp


def data_log_weights(weights: Tensor) -> Tensor:
    """log u = log(record weight): (n,) fp64; a weight of 0 gives -inf (the example never counts)."""
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise LitAlignError("record weights must be finite numbers >= 0")
    return weights.double().log()


def group_ids(groups: list) -> Tensor:
    """Group labels (strings; None = an example of its own) -> (n,) long ids 0..G-1, in order of appearance."""
    ids, out = {}, []
    for i, g in enumerate(groups):
        key = ("group", g) if g is not None else ("single", i)
        out.append(ids.setdefault(key, len(ids)))
    return torch.tensor(out, dtype=torch.long)


def _per_group(values: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, groups, values)


def self_normalize(log_w: Tensor, groups: Tensor | None = None) -> Tensor:
    """(n,) log-weights -> (n,) fp64 weights with mean exactly 1 in every group (one group when None).

    w_i = |g| exp(log_w_i - logsumexp_{j∈g} log_w_j): stable for any spread of log-weights. A group whose
    log-weights are all -inf (every weight 0) is left at 0."""
    log_w = log_w.double()
    if groups is None:
        groups = torch.zeros(log_w.shape, dtype=torch.long, device=log_w.device)
    G = int(groups.max()) + 1 if groups.numel() else 0
    gmax = torch.full((G,), float("-inf"), dtype=log_w.dtype, device=log_w.device)
    gmax = gmax.scatter_reduce(0, groups, log_w, reduce="amax")
    gmax = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    e = (log_w - gmax[groups]).exp()                                   # (n,) in [0, 1]
    total = _per_group(e, groups, G)
    size = _per_group(torch.ones_like(e), groups, G)
    return torch.where(total[groups] > 0, e * size[groups] / total[groups].clamp(min=1e-300), torch.zeros_like(e))


def clip_to_ratio(w: Tensor, max_ratio: float, groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cap weights of mean 1 (per group) at `max_ratio` × the mean, keeping the mean 1: (weights, clipped).

    Water-filling: the capped examples sit at max_ratio, the others are scaled up by one common factor per
    group so the group's mean stays 1; repeated until no example exceeds the cap (at most |g| rounds)."""
    if max_ratio < 1:
        raise LitAlignError(f"weights.max_ratio must be >= 1 (a cap below the mean cannot keep mean 1), not {max_ratio}")
    w = w.double().clone()
    if groups is None:
        groups = torch.zeros(w.shape, dtype=torch.long, device=w.device)
    G = int(groups.max()) + 1 if groups.numel() else 0
    size = _per_group(torch.ones_like(w), groups, G)
    clipped = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    for _ in range(int(size.max().item()) if G else 0):
        over = (w > max_ratio * (1 + 1e-12)) & ~clipped
        if not over.any():
            break
        clipped |= over
        k = _per_group(clipped.double(), groups, G)
        free = _per_group(torch.where(clipped, torch.zeros_like(w), w), groups, G)
        scale = torch.where(free > 0, (size - max_ratio * k) / free.clamp(min=1e-300), torch.ones_like(free))
        w = torch.where(clipped, torch.full_like(w, max_ratio), w * scale[groups])
    return w, clipped


def normalized_weights(log_w: Tensor, groups: Tensor | None, max_ratio: float | None) -> tuple[Tensor, Tensor]:
    """Self-normalise (mean 1 per group) then clip at max_ratio (None: no clipping): (n,) fp32, (n,) bool."""
    w = self_normalize(log_w, groups)
    if max_ratio is None:
        return w.float(), torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    w, clipped = clip_to_ratio(w, max_ratio, groups)
    return w.float(), clipped


def policy_ratio_weights(policy_logps: Tensor, ref_logps: Tensor, tokens: Tensor,
                         max_weight: float = 16.0) -> tuple[Tensor, Tensor]:
    """Qin & Springenberg (2025): w = clamp(exp(mean_t(log π_θ - log π_ref)), 0, max_weight), detached.

    policy_logps, ref_logps (n,) sequence log-probs; tokens (n,). Returns (weights (n,) fp32, clipped (n,))."""
    ratio = ((policy_logps.detach().double() - ref_logps.double()) / tokens.double().clamp(min=1)).exp()
    return ratio.clamp(0, max_weight).float(), ratio > max_weight


def effective_sample_size(w: Tensor) -> Tensor:
    """(Σw)² / (n Σw²): 1 when all weights are equal, 1/n when one example carries everything."""
    w = w.double()
    return (w.sum() ** 2 / (w.numel() * (w ** 2).sum()).clamp(min=1e-300)).float()


# -- the per-split table -----------------------------------------------------------------------------


@dataclass
class WeightSpec:
    """How importance weights are computed (objectives/iw_sft.py)."""

    source: Literal["reference", "data", "policy_ratio"] = "reference"
    """reference: π_ref(y|x)^(-α); data: the records' `weight` field; policy_ratio: clamp(exp(mean_t(log π_θ -
    log π_ref)), 0, policy_ratio_max), detached, per batch (Qin & Springenberg 2025)."""
    alpha: float = 1.0
    """Tempering exponent in [0, 1] (source reference): 0 is plain SFT, 1 equalises the completions."""
    length_normalize: bool = False
    """Use the per-token geometric mean π_ref(y|x)^(1/|y|) instead of the sequence probability."""
    normalize: str | None = None
    """Scope of the self-normalisation to mean 1: dataset (the whole split), group (completions sharing a
    prompt), batch (each micro-batch of each device: the only scope that depends on how examples fall into
    batches), or none (the raw weights, capped at max_ratio). Default: dataset (policy_ratio: none)."""
    max_ratio: float | None = 10.0
    """Clip weights at this multiple of the scope mean (>= 1; the mean stays 1). None: no clipping."""
    refresh_every: int = 0
    """Recompute the training weights every N optimizer steps from the CURRENT policy (source reference,
    loss mode); 0: computed once, from the starting model."""
    policy_ratio_max: float = 16.0
    """policy_ratio: the clamp W of exp(mean_t(log π_θ - log π_ref))."""

    # -- what the options mean, decided once (objectives/iw_sft.py reads these, not the option strings) -----
    @property
    def scope(self) -> str:
        return self.normalize or ("none" if self.per_step else "dataset")

    @property
    def per_step(self) -> bool:
        """Recomputed from the current policy at every step (policy_ratio): no per-split table."""
        return self.source == "policy_ratio"

    @property
    def from_reference(self) -> bool:
        """A per-split table from the reference's log-probs (source reference; else the records' `weight`)."""
        return self.source == "reference"

    @property
    def needs_reference(self) -> bool:
        return self.source != "data"

    @property
    def per_batch(self) -> bool:
        """Self-normalised within each micro-batch (the only scope that depends on how examples fall in batches)."""
        return self.scope == "batch"

    def check(self, mode: str = "loss") -> None:
        """Every option, and every combination with IW-SFT's `mode`, valid; else one sentence."""
        if mode not in MODES:
            raise LitAlignError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
        if mode == "resample":
            if self.per_step:
                raise LitAlignError("mode: resample draws each epoch's examples up front; weights.source: policy_ratio "
                                    "changes with every step: use mode: loss")
            if self.per_batch:
                raise LitAlignError("mode: resample draws from the whole training set: weights.normalize must be "
                                    "dataset, group or none, not batch")
            if self.refresh_every:
                raise LitAlignError("mode: resample draws each epoch's examples up front from fixed weights: "
                                    "weights.refresh_every needs mode: loss")
        if self.source not in SOURCES:
            raise LitAlignError(f"weights.source must be one of {', '.join(SOURCES)}, not '{self.source}'")
        if self.scope not in SCOPES:
            raise LitAlignError(f"weights.normalize must be one of {', '.join(SCOPES)}, not '{self.scope}'")
        if not 0 <= self.alpha <= 1:
            raise LitAlignError(f"weights.alpha must be in [0, 1], not {self.alpha}")
        if self.max_ratio is not None and self.max_ratio < 1:
            raise LitAlignError(f"weights.max_ratio must be >= 1 (the cap is a multiple of the mean), not {self.max_ratio}")
        if self.refresh_every < 0:
            raise LitAlignError(f"weights.refresh_every must be >= 0, not {self.refresh_every}")
        if self.refresh_every and not self.from_reference:
            raise LitAlignError("weights.refresh_every recomputes π^(-α) from the current policy: it needs "
                                "weights.source: reference")
        if self.per_step and self.scope in ("dataset", "group"):
            raise LitAlignError("weights.source: policy_ratio is computed per batch from the current policy, so it "
                                "cannot be normalised over the data set or a group: use normalize: none or batch")
        if self.policy_ratio_max <= 0:
            raise LitAlignError(f"weights.policy_ratio_max must be > 0, not {self.policy_ratio_max}")


@dataclass
class SplitWeights:
    """The weights of one split, indexed like the split's examples (batch["index"])."""

    log_w: Tensor
    """(n,) fp64 unnormalised log-weights (what batch-scope normalisation starts from)."""
    groups: Tensor
    """(n,) long group ids (completions sharing a prompt)."""
    weights: Tensor | None = None
    """(n,) fp32 normalised and clipped weights; None for scopes decided per batch (batch, none+policy_ratio)."""
    clipped: Tensor | None = None
    """(n,) bool: the weight sits at the cap."""
    computed_at: int = 0
    """Optimizer step whose policy gave the log-probs (0: the starting model)."""


class ImportanceWeights:
    """Weight tables per split: built once (from reference log-probs or record weights), refreshed on
    demand, saved in checkpoints, looked up by batch index (so a weight never depends on how examples fall
    into batches, except with normalize: batch)."""

    def __init__(self, spec: WeightSpec):
        spec.check()
        self.spec = spec
        self.tables: dict[str, SplitWeights] = {}

    def build(self, split: str, log_w: Tensor, groups: Tensor, computed_at: int = 0) -> SplitWeights:
        """Normalise and clip `log_w` (n,) over the split's scope and store the table."""
        log_w = log_w.double().cpu()
        if torch.isnan(log_w).any():
            raise LitAlignError(f"importance weights of split '{split}': NaN log-probabilities")
        table = SplitWeights(log_w, groups.cpu(), computed_at=computed_at)
        scope = self.spec.scope
        if scope in ("dataset", "group"):
            table.weights, table.clipped = normalized_weights(log_w, groups if scope == "group" else None,
                                                              self.spec.max_ratio)
        elif scope == "none" and not self.spec.per_step:
            raw = log_w.exp()
            cap = float("inf") if self.spec.max_ratio is None else self.spec.max_ratio
            table.weights, table.clipped = raw.clamp(max=cap).float(), raw > cap
        self.tables[split] = table
        return table

    def build_from_reference(self, split: str, ref_logps: Tensor, tokens: Tensor, groups: Tensor,
                             computed_at: int = 0) -> SplitWeights:
        return self.build(split, reference_log_weights(ref_logps, tokens, self.spec.alpha, self.spec.length_normalize),
                          groups, computed_at)

    def lookup(self, split: str, index: Tensor) -> tuple[Tensor, Tensor]:
        """Weights and clipped flags of examples `index` (B,) of `split`, on index's device."""
        if split not in self.tables:
            raise LitAlignError(f"no importance weights for split '{split}' (have: {', '.join(self.tables) or 'none'})")
        table = self.tables[split]
        idx = index.cpu()
        if table.weights is None:  # batch scope: normalise over this batch's examples
            if self.spec.per_batch:
                w, clipped = normalized_weights(table.log_w[idx], None, self.spec.max_ratio)
            else:
                raise LitAlignError(f"split '{split}': weights are computed per batch (source {self.spec.source})")
        else:
            w, clipped = table.weights[idx], table.clipped[idx]
        return w.to(index.device), clipped.to(index.device)

    def stats(self, split: str) -> dict[str, Tensor]:
        """mean, max, ess, clipped_fraction of a whole split's (precomputed) weights."""
        table = self.tables[split]
        if table.weights is None:
            raise LitAlignError(f"split '{split}' has no precomputed weights")
        w = table.weights
        return {"mean": w.mean(), "max": w.max(), "ess": effective_sample_size(w),
                "clipped_fraction": table.clipped.float().mean()}

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"spec": dict(vars(self.spec)), "tables": {name: dict(vars(t)) for name, t in self.tables.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("spec", {})
        differ = [k for k, v in vars(self.spec).items() if k != "refresh_every" and saved.get(k, v) != v]
        if differ:  # another weighting: the saved tables do not apply; they are computed again
            self.tables = {}
            return
        self.tables = {name: SplitWeights(**t) for name, t in state.get("tables", {}).items()}
