"""Policy-gradient losses for online RL on groups of sampled completions: GRPO (Shao et al. 2024), RLOO
(Ahmadian et al. 2024), Dr.GRPO (Liu et al. 2025), DAPO (Yu et al. 2025). Pure tensor functions.

A step samples G completions for each of P prompts (N = P·G rows of T completion tokens) and scores them; the
group's rewards become advantages (group_advantages); the per-token clipped surrogate (clipped_policy_loss),
optionally plus β·KL to the reference (kl_estimate, add_kl_to_loss; or the KL in the reward: kl_shaped_rewards),
is reduced to a (sum, count) by aggregate, and objectives/base.py divides the global sum by the global count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


# -- advantages -----------------------------------------------------------------------------------------------
# rewards (P, G): row p holds the rewards of prompt p's G completions. Every estimator subtracts a baseline
# computed from the group itself (no value model), so a group whose rewards are all equal has advantages 0:
# it carries no learning signal (zero_spread_share measures how much of the batch that is).


def _grpo(rewards: Tensor, eps: float) -> Tensor:
    mean, std = rewards.mean(-1, keepdim=True), rewards.std(-1, keepdim=True)   # (P, 1); std with Bessel's correction
    return (rewards - mean) / (std + eps)


def _dr_grpo(rewards: Tensor, eps: float) -> Tensor:
    return rewards - rewards.mean(-1, keepdim=True)


def _rloo(rewards: Tensor, eps: float) -> Tensor:
    others = (rewards.sum(-1, keepdim=True) - rewards) / (rewards.shape[-1] - 1)   # (P, G) mean of the other G-1
    return rewards - others


ADVANTAGE_ESTIMATORS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
}
"""Advantage estimators by the name a config gives them."""


def group_advantages(rewards: Tensor, estimator: str = "grpo", eps: float = 1e-4) -> Tensor:
    """Advantages from the rewards of G completions per prompt, rewards (P, G) -> (P, G), over each row:

        grpo     A_i = (r_i - mean r) / (std r + eps)       GRPO; std with Bessel's correction (TRL's scale_rewards)
        dr_grpo  A_i = r_i - mean r                         Dr.GRPO: the std scaling biases towards groups that are
                                                            nearly all right or all wrong, so it is dropped
        rloo     A_i = r_i - 1/(G-1) Σ_{j≠i} r_j            RLOO's leave-one-out baseline; = G/(G-1) (r_i - mean r)

    RLOO's baseline does not depend on r_i, so its policy gradient is unbiased; dr_grpo is (G-1)/G times rloo
    (unbiased up to that constant); grpo's std depends on r_i too. Equal rewards give 0 (grpo: 0 / eps, no NaN).
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator '{estimator}': choose one of {', '.join(ADVANTAGE_ESTIMATORS)}")
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError("a group baseline needs at least 2 samples per prompt (num_generations >= 2): rewards must "
                         f"be (P, G) with G >= 2, got {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return ADVANTAGE_ESTIMATORS[estimator](rewards, eps)


def zero_spread_share(rewards: Tensor) -> Tensor:
    """The share of groups whose G rewards are all equal, rewards (P, G) -> (): groups with advantages 0 under every
    estimator, which add nothing to the policy gradient (DAPO's dynamic sampling drops and resamples them)."""
    return (rewards == rewards[:, :1]).all(-1).float().mean()


# -- KL to the reference --------------------------------------------------------------------------------------


def _k1(d: Tensor) -> Tensor:
    return -d


def _k2(d: Tensor) -> Tensor:
    return d ** 2 / 2


def _k3(d: Tensor) -> Tensor:
    return torch.expm1(d) - d            # exp(d) - 1 - d, without the cancellation of exp(d) - 1 near d = 0


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}
"""Per-token KL estimators by name (Schulman 2020)."""


def kl_estimate(logps: Tensor, ref_logps: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(π || π_ref) from tokens sampled from π (Schulman 2020, "Approximating KL
    divergence"), logps (N, T) of the policy and ref_logps (N, T) of the reference -> (N, T). With
    d = log π_ref(y_t) - log π(y_t):

        k1 = -d                 unbiased, high variance, and negative on many tokens
        k2 = d²/2               biased (exact to second order in d), low variance, >= 0
        k3 = exp(d) - d - 1     unbiased and >= 0 (k1 plus the control variate exp(d) - 1, of mean 0), low variance

    All are 0 where π = π_ref. As a loss term, differentiated through log π on samples of the current π, their
    expected gradients differ: k1's is 0 (the mean of a score function), so k1 belongs in the reward
    (kl_shaped_rewards: PPO/RLHF, OpenRLHF); k2's is ∇ KL(π || π_ref); k3's, GRPO's KL in the loss
    (add_kl_to_loss), is ∇ KL(π_ref || π), the reverse direction.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator '{estimator}': choose one of {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](ref_logps - logps)


def kl_shaped_rewards(rewards: Tensor, token_kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """The KL in the reward (PPO for RLHF, OpenRLHF): r_i - β Σ_t kl_it over each completion's tokens, rewards (N,),
    token_kl (N, T) (e.g. kl_estimate(..., "k1")), mask (N, T) bool -> (N,), detached: a reward is a constant of
    the policy gradient, so the KL reaches the policy only through the advantages computed from it."""
    kl = torch.where(mask, token_kl, 0).sum(-1)                       # (N,)
    return (rewards - beta * kl).detach()


def add_kl_to_loss(token_losses: Tensor, token_kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """The KL in the loss (GRPO): l_it + β kl_it per token, (N, T) each (kl with gradient: "k3" as GRPO, or "k2"),
    0 where mask is False; then aggregate as any token loss."""
    return torch.where(mask, token_losses + beta * token_kl, 0)


# -- the clipped surrogate ------------------------------------------------------------------------------------


@dataclass
class PolicyLoss:
    token_losses: Tensor
    """(N, T) per-token loss, with gradient; 0 where mask is False."""
    ratio: Tensor
    """(N, T) π(y_t) / π_old(y_t), detached; 1 where mask is False."""
    clipped: Tensor
    """(N, T) bool: the clipped term was the min (and differs), so the token has no gradient; False where masked."""
    low_clipped: Tensor
    """(N, T) bool: clipped with A < 0 and ratio < 1 - eps_low."""
    high_clipped: Tensor
    """(N, T) bool: clipped with A > 0 and ratio > 1 + eps_high."""


def clipped_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, eps_low: float = 0.2,
                        eps_high: float = 0.2) -> PolicyLoss:
    """PPO's clipped surrogate per token (Schulman et al. 2017; GRPO's per-token form):

        ρ_t = π(y_t) / π_old(y_t) = exp(log π(y_t) - log π_old(y_t))
        l_t = -min(ρ_t A, clip(ρ_t, 1 - eps_low, 1 + eps_high) A)

    logps (N, T) of the policy (with gradient), old_logps (N, T) of the policy that sampled (detached here),
    advantages (N,) per completion (broadcast over its tokens) or (N, T), mask (N, T) bool -> PolicyLoss.
    On the first pass over fresh samples old_logps = logps.detach(): ρ = 1 exactly, nothing is clipped and
    ∇l_t = -A ∇log π(y_t), REINFORCE with the group baseline. Later passes over the same samples clip: a token
    whose ρ has already moved past the bound in the direction A favours gets no gradient. eps_high > eps_low is
    DAPO's clip-higher: low-probability tokens with A > 0 may grow further, which keeps the entropy up.
    """
    log_ratio = torch.where(mask, logps - old_logps.detach(), 0)      # (N, T); 0 on padding: no inf/NaN there
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(ratio.dtype)
    adv = adv[:, None] if adv.ndim == 1 else adv                      # (N, 1) or (N, T)
    unclipped = ratio * adv
    clipped_term = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    token_losses = torch.where(mask, -torch.minimum(unclipped, clipped_term), 0)
    clipped = mask & (clipped_term < unclipped)             # A > 0: ρ > 1 + eps_high; A < 0: ρ < 1 - eps_low
    ratio = ratio.detach()
    return PolicyLoss(token_losses, ratio, clipped, clipped & (ratio < 1), clipped & (ratio > 1))


# -- aggregation ----------------------------------------------------------------------------------------------

LOSS_AGGREGATIONS = ("sequence_mean", "token_mean", "constant_length")
"""How aggregate reduces per-token losses (the `loss_type` of a config)."""


def aggregate(token_losses: Tensor, mask: Tensor, mode: str,
              max_completion_length: int | None = None) -> tuple[Tensor, Tensor]:
    """(loss sum, count) of token_losses (N, T) over the tokens of mask (N, T) bool, n_i = completion i's tokens:

        mode             sum                 count    the loss: global sum / global count           TRL loss_type
        sequence_mean    Σ_i Σ_t l_it / n_i  N        a mean over completions of their token means  "grpo"
        token_mean       Σ_i Σ_t l_it        Σ_i n_i  a mean over every token of the step           "dapo" ("bnpo")
        constant_length  Σ_i Σ_t l_it        N · L    Σ_it l_it / (N L), L = max_completion_length  "dr_grpo"

    objectives/base.py divides the sum over the optimizer step (every accumulated micro-batch, every device) by
    the count over the same, so each mode is exact whatever the split. TRL's "dapo" is token_mean (its count is the
    whole generation batch's); its "bnpo" divides by each micro-batch's own tokens, which token_mean equals only
    without accumulation on one device. sequence_mean weights a completion's tokens by 1/n_i: a long wrong answer is
    penalised less per token than a short one (the length bias Dr.GRPO removes). A completion with n_i = 0 adds 0
    to the sum and still counts as one completion in sequence_mean (no NaN).
    """
    losses = torch.where(mask, token_losses, 0)                       # (N, T)
    tokens = mask.sum(-1)                                             # (N,) n_i
    if mode == "sequence_mean":
        return (losses.sum(-1) / tokens.clamp(min=1)).sum(), torch.tensor(float(mask.shape[0]), device=mask.device)
    if mode == "token_mean":
        return losses.sum(), tokens.sum()
    if mode == "constant_length":
        if max_completion_length is None or max_completion_length < 1:
            raise ValueError("loss aggregation constant_length (Dr.GRPO) divides by N · max_completion_length: give "
                             f"max_completion_length >= 1, got {max_completion_length}")
        return losses.sum(), torch.tensor(float(mask.shape[0] * max_completion_length), device=mask.device)
    raise ValueError(f"unknown loss aggregation '{mode}': choose one of {', '.join(LOSS_AGGREGATIONS)}")
