"""Loss functions as pure tensor functions: per-example values in, per-example losses out. No Lightning.

Reductions (over tokens, examples, devices and accumulated micro-batches) happen in objectives/base.py,
which divides the summed loss by the global count of what it is averaged over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def nll(token_logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood of the target tokens of each row.

    token_logps (N, T) fp32, mask (N, T) bool -> (sum of -log p per row (N,), target tokens per row (N,)).
    The SFT loss is sum(nll) / sum(tokens) over the whole optimizer step: a mean over target tokens.
    """
    return -(token_logps * mask).sum(-1), mask.sum(-1)


# -- preference losses --------------------------------------------------------------------------------
# Every preference loss takes the per-example sequence log-probs of the chosen and rejected continuations
# under the policy (with gradient) and the reference (constants), each (B,) fp32, and returns a
# `PreferenceLoss`: per-example losses (B,) plus the implicit rewards β·(log π - log π_ref), detached.


@dataclass
class PreferenceLoss:
    losses: Tensor
    """(B,) per-pair loss, with gradient."""
    chosen_rewards: Tensor
    """(B,) β (log π(y_w|x) - log π_ref(y_w|x)), detached."""
    rejected_rewards: Tensor
    """(B,) β (log π(y_l|x) - log π_ref(y_l|x)), detached."""


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


def chosen_nll(chosen_logps: Tensor, chosen_tokens: Tensor) -> Tensor:
    """Per-pair NLL of the chosen continuation, a mean over its tokens: -log π(y_w|x) / |y_w|, (B,).

    The optional NLL term of DPO (as in RPO, Pang et al. 2024): added per pair, α · chosen_nll.
    """
    return -chosen_logps / chosen_tokens.clamp(min=1)


# -- importance-reweighted SFT ------------------------------------------------------------------------


def weighted_nll(token_logps: Tensor, mask: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Importance-weighted NLL of each row: w_i · Σ_t -log p(y_it), and the row's target-token count n_i.

    token_logps (N, T) fp32, mask (N, T) bool, weights (N,) constants (no gradient flows into them)
    -> ((N,) weighted sums, (N,) tokens). The IW-SFT loss is Σ_i w_i·nll_i / Σ_i n_i over the optimizer step:
    the count is the plain token count, so w ≡ 1 is exactly SFT (objectives/iw_sft.py says why).
    """
    loss_sum, tokens = nll(token_logps, mask)
    return weights.detach().to(loss_sum.dtype) * loss_sum, tokens


# -- reward model ---------------------------------------------------------------------------------------------


def ranked_margins(rewards: Tensor) -> Tensor:
    """r_j - r_l for every pair j < l of each row's k completions ranked best first: rewards (B, k) -> (B, C(k,2)),
    pairs in the order (0,1), (0,2), ..., (1,2), ... (k = 2: the one column r_chosen - r_rejected)."""
    j, l = torch.triu_indices(rewards.shape[1], rewards.shape[1], offset=1, device=rewards.device)
    return rewards[:, j] - rewards[:, l]


def bradley_terry_loss(rewards: Tensor) -> Tensor:
    """The Bradley-Terry loss of a reward model (InstructGPT, Ouyang et al. 2022, eq. 1), per prompt:

        l = -1/C(k,2) Σ_{j<l} log σ(r_j - r_l)

    over the C(k,2) pairs of the prompt's k >= 2 completions, ranked best first. rewards (B, k), column 0 the
    best (k = 2: chosen, rejected; then l = -log σ(r_w - r_l)) -> (B,) losses, with gradient. The mean over the
    prompt's pairs makes each prompt one unit, as InstructGPT does: a ranked list of 9 is not worth 36 pairs.
    Equal rewards give log 2 for every k; the loss depends only on the differences of a row's rewards.
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (B, k) with k >= 2 completions ranked best first, got {tuple(rewards.shape)}")
    return -F.logsigmoid(ranked_margins(rewards)).mean(-1)
