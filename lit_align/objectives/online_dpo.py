"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"): DPO on pairs the policy
samples itself, ordered by a reward.

Each training micro-batch holds P prompts x. For each prompt (objectives/online.py has the sampling and rewards):

  1. sample two completions y_1, y_2 ~ π_θ(·|x) at temperature T;
  2. score them, r_1 and r_2 (eval/rewards.py); the better one is y_w, the other y_l. A tie (r_1 = r_2) says
     nothing about which is better: the pair is left out of the loss and counted in rollout/ties;
  3. DPO's loss on the pair (losses/preference.py, any of DPO's variants), with the reference's log-probs of the same
     completions (a frozen copy of the starting policy, or the LoRA policy with its adapter disabled):

        h = (log π_θ(y_w|x) - log π_θ(y_l|x)) - (log π_ref(y_w|x) - log π_ref(y_l|x))
        l = -log σ(β h)                                                     (loss: sigmoid)

     with sequence log-probs at temperature 1 (the policy's own distribution; T only changes which pairs are
     drawn). The loss is a mean over the optimizer step's untied pairs (objectives/base.py's global count), so it is
     exact under gradient accumulation and across devices; a step whose pairs all tie makes no update.

Metrics: reward (the mean of both samples), rollout/{ties, completion_length, truncated, reward_margin (r_w - r_l
over untied pairs)}, and DPO's rewards/{chosen, rejected, margins, accuracy} (β (log π - log π_ref), over untied
pairs).
"""

from __future__ import annotations

from typing import Literal

import torch

from lit_align.data.label_noise import LabelNoise
from lit_align.losses.preference import preference_loss
from lit_align.modeling.logprobs import token_logps
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.dpo import check_preference_options
from lit_align.objectives.online import OnlineObjective, online_reference
from lit_align.objectives.reference import ReferenceSpec


def order_pairs(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (P, 2) of each prompt's two samples -> (columns (P, 2): [the better sample's, the other's], untied (P,)
    bool). A tie keeps the sampled order and is marked, to be left out of the loss."""
    order = (rewards[:, 1] > rewards[:, 0]).long()                               # (P,) column of the winner
    return torch.stack([order, 1 - order], -1), rewards[:, 0] != rewards[:, 1]


class OnlineDPO(OnlineObjective):
    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        rewards: "list[str | dict] | str | dict | None" = None,
        beta: float = 0.1,
        loss: Literal["sigmoid", "robust", "ipo", "hinge"] = "sigmoid",
        label_smoothing: float = 0.0,
        reference: ReferenceSpec | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        sample_seed: int = 0,
        eval_max_new_tokens: int | None = None,
        log_samples_every_n_steps: int = 50,
        label_noise: LabelNoise | None = None,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or a builtin: name), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            rewards: what orders each sampled pair (eval/rewards.py; as GRPO's).
            beta: β, the strength of the implicit KL penalty towards the reference (DPO's).
            loss: sigmoid (DPO), robust, ipo or hinge (losses/preference.py).
            label_smoothing: ε of conservative DPO (sigmoid, robust).
            reference: π_ref: mode copy (a frozen model) or disable_adapter (the LoRA policy's base).
            max_new_tokens: the longest completion.
            temperature: T of the sampler.
            top_p: nucleus sampling (1: off).
            top_k: sample among the k likeliest tokens (0: off).
            sample_seed: the sampler's seed (with the step and the prompt's index).
            eval_max_new_tokens: completion length on evaluation prompt sets (None: max_new_tokens).
            log_samples_every_n_steps: write the first prompt's pair and rewards to TensorBoard's Text tab.
            label_noise: {fraction, seed}: a labeller who errs: each binary reward turns over (1 - r) with probability
                fraction, seeded by the query (objectives/online.py), which reverses or ties the pair; None: none.
        """
        super().__init__(policy, optim, rewards, 2, max_new_tokens, temperature, top_p, top_k, sample_seed,
                         eval_max_new_tokens, log_samples_every_n_steps, label_noise)
        check_preference_options(loss, beta, label_smoothing)
        self.beta, self.loss_name, self.label_smoothing = beta, loss, label_smoothing
        self.reference = online_reference(reference)

    def step(self, batch: dict) -> Sums:
        P = len(batch["records"])
        contexts, completions, _, scores = self.rollout(batch)                  # N = 2P rows, prompt-major
        rows = self.rows(contexts, completions)
        out = token_logps(self.model, rows["labels"], input_ids=rows["input_ids"],
                          attention_mask=rows["attention_mask"], use_cache=False)  # (2P, L) fp32, with gradient
        ref = self.reference.token_logps(rows, self.model)                        # (2P, L) fp32, constants
        policy, reference = out.sequence.view(P, 2), ref.sum(-1).view(P, 2)       # (P, 2) sequence log-probs
        tokens = out.tokens.view(P, 2)
        r = scores.total.to(self.device).view(P, 2)                               # (P, 2)
        pick, untied = order_pairs(r)                                             # (P, 2) [winner, loser], (P,)
        result = preference_loss(self.loss_name, policy.gather(1, pick), reference.gather(1, pick),
                                 tokens.gather(1, pick), self.beta, self.label_smoothing)
        n = untied.sum()
        ended = self.ended(completions)
        chosen, rejected = result.chosen_rewards[untied], result.rejected_rewards[untied]
        return {
            "loss": ((result.losses * untied).sum(), n),                          # ties: in the graph, weight 0
            "reward": (r.sum(), 2 * P),
            **{f"reward/{label}": (v.sum(), 2 * P) for label, v in scores.per_function.items()
               if len(scores.per_function) > 1},
            "rollout/ties": ((~untied).sum().float(), P),
            "rollout/reward_margin": ((r.max(-1).values - r.min(-1).values)[untied].sum(), n),
            "rollout/completion_length": (out.mask.sum().float(), 2 * P),
            "rollout/truncated": ((~ended).sum().float(), 2 * P),
            "rewards/chosen": (chosen.sum(), n),
            "rewards/rejected": (rejected.sum(), n),
            "rewards/margins": ((chosen - rejected).sum(), n),
            "rewards/accuracy": ((chosen > rejected).float().sum(), n),
        }
