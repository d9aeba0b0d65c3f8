"""Losses on rankings of k >= 2 completions per prompt, best first: the reward model's Bradley-Terry loss and
listwise DPO (Plackett-Luce, all pairs). Pure tensor functions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


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


# -- ranked lists ---------------------------------------------------------------------------------------------
# Rankings of k >= 2 continuations per prompt, best first: (B, k) sequence log-probs of the policy (with
# gradient) and of the reference; the implicit rewards r = β (log π - log π_ref) (B, k).


def plackett_luce_dpo_loss(policy_logps: Tensor, ref_logps: Tensor, beta: float = 0.1) -> Tensor:
    """Listwise DPO (Rafailov et al. 2023, appendix A.3): the ranking's negative log-likelihood under the
    Plackett-Luce model of the implicit rewards r_j = β (log π(y_j|x) - log π_ref(y_j|x)), y_0 the best:

        l = -Σ_{j=0}^{k-2} log [ exp(r_j) / Σ_{m=j}^{k-1} exp(r_m) ]

    (B, k), (B, k) -> (B,). k = 2 is DPO's -log σ(r_0 - r_1); with the policy equal to the reference every r is 0
    and l = log k!.
    """
    r = beta * (policy_logps - ref_logps)                                    # (B, k)
    tail = torch.logcumsumexp(r.flip(-1), dim=-1).flip(-1)                   # log Σ_{m>=j} exp(r_m), (B, k)
    return (tail - r)[:, :-1].sum(-1)


def all_pairs_dpo_loss(policy_logps: Tensor, ref_logps: Tensor, beta: float = 0.1) -> Tensor:
    """DPO over the k(k-1)/2 ordered pairs of a ranking, averaged (as InstructGPT's reward model does over its
    comparisons): l = 1/C(k,2) Σ_{i<j} -log σ(r_i - r_j), with r as in `plackett_luce_dpo_loss`.
    (B, k), (B, k) -> (B,); k = 2 is DPO; with the policy equal to the reference l = log 2."""
    return bradley_terry_loss(beta * (policy_logps - ref_logps))


RANKING_LOSSES: dict[str, Callable[..., Tensor]] = {"plackett_luce": plackett_luce_dpo_loss,
                                                    "all_pairs": all_pairs_dpo_loss}
