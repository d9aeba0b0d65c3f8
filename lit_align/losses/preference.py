"""Preference losses on (chosen, rejected) pairs: DPO's family (sigmoid, robust/cDPO, IPO, hinge) with a
reference, and the reference-free SimPO and ORPO. Pure tensor functions: per-pair values in, per-pair losses out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.losses.likelihood import chosen_nll


# -- preference losses --------------------------------------------------------------------------------
# Every preference loss takes the per-example sequence log-probs of the chosen and rejected continuations
# under the policy (with gradient) and, for DPO's family, the reference (constants), each (B,) fp32, and
# returns a `PreferenceLoss`: per-example losses (B,) plus each continuation's implicit reward, detached
# (DPO: β·(log π - log π_ref); the reference-free SimPO and ORPO say theirs).


@dataclass
class PreferenceLoss:
    losses: Tensor
    """(B,) per-pair loss, with gradient."""
    chosen_rewards: Tensor
    """(B,) the implicit reward of y_w, detached: β (log π(y_w|x) - log π_ref(y_w|x)) for DPO's family."""
    rejected_rewards: Tensor
    """(B,) the implicit reward of y_l, detached: β (log π(y_l|x) - log π_ref(y_l|x)) for DPO's family."""


def _logits(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    """h = (log π(y_w) - log π(y_l)) - (log π_ref(y_w) - log π_ref(y_l)), (B,)."""
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def _rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> tuple[Tensor, Tensor]:
    return (beta * (policy_chosen - ref_chosen)).detach(), (beta * (policy_rejected - ref_rejected)).detach()


def dpo_sigmoid_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                     beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """DPO (Rafailov et al. 2023): -log σ(β h); with label smoothing ε, conservative DPO (cDPO, Mitchell 2023):

        l = -(1 - ε) log σ(β h) - ε log σ(-β h)

    the expected DPO loss when each preference label is flipped with probability ε. ε = 0 is plain DPO.
    With policy = reference, h = 0 and l = log 2 for every ε.
    """
    h = _logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return PreferenceLoss(losses, *_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta))


def robust_dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                    beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """Robust DPO (Chowdhury et al. 2024): the unbiased loss under labels flipped with probability ε < 1/2,

        l = (-(1 - ε) log σ(β h) + ε log σ(-β h)) / (1 - 2ε)

    ε = 0 is plain DPO.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    h = _logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
              + label_smoothing * F.logsigmoid(-beta * h)) / (1 - 2 * label_smoothing)
    return PreferenceLoss(losses, *_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta))


def ipo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """IPO (Azar et al. 2023): regress h onto 1/(2β) (β plays the role of the paper's τ),

        l = (h - 1/(2β))²

    The paper writes h with sequence log-probs; its authors' code and TRL divide each log-prob by its token
    count (`preference_loss(length_normalize=True)`, DPO's default for ipo). `label_smoothing` is not used.
    """
    h = _logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = (h - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, *_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta))


def hinge_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceLoss:
    """Hinge loss on the reward margin (SLiC, Zhao et al. 2023; RSO, Liu et al. 2023):

        l = max(0, 1 - β h)

    `label_smoothing` is not used.
    """
    h = _logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = torch.relu(1 - beta * h)
    return PreferenceLoss(losses, *_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta))


PREFERENCE_LOSSES: dict[str, Callable[..., PreferenceLoss]] = {
    "sigmoid": dpo_sigmoid_loss,
    "robust": robust_dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
}
"""Loss variants by the name a config gives them (`DPO.loss`)."""
SMOOTHED_LOSSES = ("sigmoid", "robust")
"""The variants that use `label_smoothing` (the others ignore it)."""


def preference_loss(name: str, policy_logps: Tensor, ref_logps: Tensor, tokens: Tensor, beta: float = 0.1,
                    label_smoothing: float = 0.0, length_normalize: bool = False) -> PreferenceLoss:
    """The preference loss `name` of PREFERENCE_LOSSES on (B, 2) sequence log-probs [chosen, rejected] of the
    policy (with gradient) and the reference, with (B, 2) target-token counts.

    With `length_normalize` the loss sees every log π divided by its continuation's token count,
    log π(y|x) / |y| (SimPO; the IPO authors' and TRL's IPO), but the rewards are always those of the whole
    sequence, β (log π(y|x) - log π_ref(y|x)), detached: the metric means one thing whatever the loss saw.
    """
    pi, pi_ref = policy_logps, ref_logps
    if length_normalize:
        pi, pi_ref = pi / tokens, pi_ref / tokens
    out = PREFERENCE_LOSSES[name](pi[:, 0], pi[:, 1], pi_ref[:, 0], pi_ref[:, 1], beta=beta,
                                  label_smoothing=label_smoothing)
    if length_normalize:
        out.chosen_rewards, out.rejected_rewards = _rewards(policy_logps[:, 0], policy_logps[:, 1], ref_logps[:, 0],
                                                            ref_logps[:, 1], beta)
    return out


def weighted_pair_sum(losses: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair weights: (Σ_i w_i·ℓ_i, Σ_i w_i) of losses (B,) with gradient and weights (B,) > 0, constants.

    The objective's loss over the optimizer step is then Σ w_i·ℓ_i / Σ w_i over all of the step's pairs (every
    accumulated micro-batch, every device: objectives/base.py divides by the global Σ w). w ≡ 1 is the plain
    mean over pairs; a pair of weight 2 counts as that pair twice.
    """
    weights = weights.detach().to(losses.dtype)
    return (weights * losses).sum(), weights.sum()


# -- reference-free preference losses -----------------------------------------------------------------


def simpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, chosen_tokens: Tensor, rejected_tokens: Tensor,
               beta: float = 2.0, gamma: float = 0.5) -> PreferenceLoss:
    """SimPO (Meng et al. 2024): reference-free, length-normalised, with a target reward margin γ:

        r(y) = β/|y| · log π(y|x)                   the implicit reward: β times the per-token mean log-prob
        l    = -log σ(r(y_w) - r(y_l) - γ)

    policy_* (B,) sequence log-probs (with gradient), *_tokens (B,) target-token counts |y| -> PreferenceLoss
    with the rewards r(y_w), r(y_l), detached. Equal per-token log-probs give l = softplus(γ) = log(1 + e^γ);
    γ = 0 is DPO's sigmoid loss on per-token mean log-probs with no reference.
    """
    chosen = beta * policy_chosen / chosen_tokens.clamp(min=1)       # (B,)
    rejected = beta * policy_rejected / rejected_tokens.clamp(min=1)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return PreferenceLoss(losses, chosen.detach(), rejected.detach())


MAX_MEAN_LOGP = -1e-6
"""ORPO's per-token mean log-prob x is clamped to at most this before log(1 - e^x): in exact arithmetic x < 0,
but an fp32 log-softmax of a near-certain token can round to 0 or just above it, where log(1 - e^x) is -inf or
NaN. The clamp caps the odds at ~1e6 (log odds ≤ 13.8), reached only when p̄ > 0.999999."""


def log_odds(mean_logps: Tensor) -> Tensor:
    """log odds(y) = log p̄ - log(1 - p̄) for p̄ = exp(x), x = the per-token mean log-prob (B,) -> (B,).

    log(1 - e^x) as log(-expm1(x)): exact near x = 0, where 1 - e^x would cancel (x clamped: MAX_MEAN_LOGP).
    """
    x = mean_logps.clamp(max=MAX_MEAN_LOGP)
    return x - torch.log(-torch.expm1(x))


@dataclass
class OddsRatioLoss(PreferenceLoss):
    """ORPO's per-pair loss (chosen_rewards / rejected_rewards: λ · the per-token mean log-prob), plus its parts."""

    nll: Tensor
    """(B,) -log π(y_w|x) / |y_w|, the NLL term (a per-token mean per pair), detached."""
    log_odds_ratio: Tensor
    """(B,) log σ(log odds(y_w) - log odds(y_l)) = -(the odds-ratio term), detached (TRL's `log_odds_ratio`)."""
    log_odds_chosen: Tensor
    """(B,) log odds(y_w) - log odds(y_l), the log of the odds ratio, detached (TRL's `log_odds_chosen`)."""


def orpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, chosen_tokens: Tensor, rejected_tokens: Tensor,
              odds_ratio_weight: float = 0.1) -> OddsRatioLoss:
    """ORPO (Hong et al. 2024): reference-free; SFT on the chosen answer plus λ times an odds-ratio term:

        p̄(y)  = exp(log π(y|x) / |y|)             the per-token geometric mean probability
        odds(y) = p̄(y) / (1 - p̄(y))
        l = -log π(y_w|x) / |y_w|  +  λ · (-log σ(log odds(y_w) - log odds(y_l)))

    policy_* (B,) sequence log-probs (with gradient), *_tokens (B,) target-token counts, λ = odds_ratio_weight
    -> OddsRatioLoss. The NLL term is a per-token mean per pair (as the paper's L_SFT); the rewards are
    λ · log π(y|x) / |y| (TRL's). Swapping chosen and rejected negates the log odds ratio.
    """
    chosen = policy_chosen / chosen_tokens.clamp(min=1)               # (B,) per-token mean log-probs
    rejected = policy_rejected / rejected_tokens.clamp(min=1)
    ratio = log_odds(chosen) - log_odds(rejected)                    # (B,) log of the odds ratio
    log_sigma = F.logsigmoid(ratio)
    nll_term = chosen_nll(policy_chosen, chosen_tokens)              # (B,) = -chosen
    losses = nll_term - odds_ratio_weight * log_sigma
    return OddsRatioLoss(losses, (odds_ratio_weight * chosen).detach(), (odds_ratio_weight * rejected).detach(),
                         nll_term.detach(), log_sigma.detach(), ratio.detach())
