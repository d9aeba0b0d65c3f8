"""Online RL on the policy's own samples: group-relative policy optimisation (GRPO, Shao et al. 2024) and its family
(RLOO, Ahmadian et al. 2024; Dr.GRPO, Liu et al. 2025; DAPO's token-level loss and clip-higher, Yu et al. 2025).

Each training micro-batch holds P prompts x (any record with a prompt: data/prompts.py). For each prompt:

  1. sample G completions y_1..y_G ~ π_θ(·|x) at temperature T (top_p, top_k; modeling/generation.sample_ids),
     each up to and including the end token, or cut at max_new_tokens (truncated);
  2. score them: r_i = Σ_f w_f r_f(x, y_i)                      (eval/rewards.py: scorers, Python functions)
                 [- β Σ_t KL_it when kl_in: reward]
  3. advantages from the group, A_i = (r_i - mean r) / (std r + ε)  (grpo), r_i - mean r (dr_grpo), or
     r_i - mean_{j≠i} r_j (rloo)                                (losses/policy_gradient.group_advantages);
  4. per completion token t, with ρ_it = π_θ(y_it | x, y_i<t) / π_old(y_it | x, y_i<t) at temperature T:

        ℓ_it = -min(ρ_it A_i, clip(ρ_it, 1 - ε_low, 1 + ε_high) A_i)   [+ β KL_it when kl_in: loss]

     With num_iterations μ = 1 each sample is used for one update (π_old = π_θ, detached), so ρ = 1 exactly and the
     gradient is -A_i ∇log π_θ: REINFORCE with a group baseline. With μ > 1 (sample reuse, PPO-style) the data module
     gives each optimizer step's prompts for μ optimizer steps in a row (data/samplers.py); the first samples and
     stores the rollout (completions, rewards, advantages, π_old's token log-probs), the next μ - 1 update on it
     again, where ρ ≠ 1 and the clip acts. The stored rollouts are part of the checkpoint. KL_it estimates
     KL(π_θ || π_ref) per token (k1, k2, k3), recomputed at every update (in the reward: once, at sampling);
  5. aggregated over the whole optimizer step (losses/policy_gradient.aggregate, divided by the global count in
     objectives/base.py): sequence_mean Σ_i (Σ_t ℓ_it / |y_i|) / N (GRPO), token_mean Σ_it ℓ_it / Σ_i |y_i|
     (DAPO), constant_length Σ_it ℓ_it / (N · max_new_tokens) (Dr.GRPO). Exact under gradient accumulation and
     across devices: batch 8 equals 4 x accumulation 2 equals 2 devices x 4.

What the sampler draws from is what the loss scores: the same temperature divides the fp32 logits in both
(logprobs.token_logps(temperature=T)); the model's own generation config is replaced (no hidden top_k 50); top_k /
top_p, when set, sample from a truncated distribution that the log-probs do not renormalise (as in TRL), which
biases the ratio. The end token that closes a completion is a target even when it is also the padding token:
targets come from each completion's length, never from comparing ids with the pad id.

A prompt's samples depend only on (sample_seed, the optimizer step, the prompt's index in the data), never on the
batch size, accumulation, device count or the state of any RNG: a run killed and resumed from a checkpoint
samples, scores and updates exactly as the uninterrupted run.

Metrics (train/...): reward, reward/<label> per reward function, rollout/{reward_std, zero_spread, advantage_abs,
completion_length, truncated, entropy} (entropy: the mean -log π_T of the sampled tokens, an unbiased estimate of
the sampling distribution's per-token entropy), policy/{kl, clip_fraction}. On evaluation sets of prompts: greedy
completions scored by the same rewards (val/reward, ...); on pair sets (`kind: pair`): the policy's pair metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from lit_align.data.label_noise import LabelNoise
from lit_align.errors import LitAlignError
from lit_align.losses.policy_gradient import (add_kl_to_loss, aggregate, clipped_policy_loss, group_advantages,
                                              kl_estimate, kl_shaped_rewards, zero_spread_share)
from lit_align.modeling.logprobs import token_logps
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import OptimSpec, Sums
from lit_align.objectives.online import OnlineObjective, online_reference
from lit_align.objectives.reference import ReferenceSpec


@dataclass
class Rollout:
    """One micro-batch's samples, kept for the num_iterations - 1 updates that reuse them (N = P·G rows)."""
    window: int                          # the optimizer step that sampled it, // num_iterations
    contexts: list[list[int]]
    completions: list[list[int]]
    rewards: torch.Tensor                # (N,) the total reward (KL-shaped when kl_in: reward)
    per_function: dict[str, torch.Tensor]  # label -> (N,)
    advantages: torch.Tensor             # (N,)
    old_logps: torch.Tensor              # (N, L) fp32 log π_old of the sampled tokens (0 elsewhere)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return {k: _to_cpu(v) for k, v in value.items()} if isinstance(value, dict) else value


class GRPO(OnlineObjective):
    # (added after the first GRPO checkpoints)
    added_settings = {**OnlineObjective.added_settings, "num_iterations": 1}

    def __init__(
        self,
        policy: ModelSpec | None = None,
        optim: OptimSpec | None = None,
        rewards: "list[str | dict] | str | dict | None" = None,
        num_generations: int = 4,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo",
        loss_aggregation: Literal["sequence_mean", "token_mean", "constant_length"] = "sequence_mean",
        num_iterations: int = 1,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        kl_in: Literal["loss", "reward"] = "loss",
        reference: ReferenceSpec | None = None,
        mask_truncated: bool = False,
        sample_seed: int = 0,
        eval_max_new_tokens: int | None = None,
        log_samples_every_n_steps: int = 50,
        label_noise: LabelNoise | None = None,
    ):
        """
        Args:
            policy: the model to train (hub name, local path, or a builtin: name), dtype, LoRA.
            optim: AdamW and the learning-rate schedule.
            rewards: the reward functions (eval/rewards.py): a scorer name (match, ab_letter, final_number, regex,
                substring) or {name, <options>, weight?, label?}, or {function: "module:function", weight?, label?}
                called as function(prompts, completions, records) -> list of floats; one or a list (weighted sum).
            num_generations: G, completions sampled per prompt (>= 2: the baseline is the group's).
            max_new_tokens: the longest completion; longer ones are cut (truncated).
            temperature: T of the sampler and of the log-probs the loss uses.
            top_p: nucleus sampling (1: off). Biases the ratio (module docstring).
            top_k: sample among the k likeliest tokens (0: off). Biases the ratio.
            advantage: grpo (group mean and std), dr_grpo (group mean only), rloo (leave-one-out mean).
            loss_aggregation: sequence_mean (GRPO), token_mean (DAPO), constant_length (Dr.GRPO).
            num_iterations: μ, the updates made on each rollout (1: on-policy, ρ = 1; > 1: the data module repeats
                each optimizer step's prompts μ times and the clipped ratio keeps the later updates near π_old).
            epsilon: ε_low, the clip range below 1 (and above, unless epsilon_high).
            epsilon_high: ε_high, the clip range above 1 (DAPO's clip-higher, e.g. 0.28); None: epsilon.
            beta: β, the weight of the KL to the reference (0: no reference is built).
            kl_estimator: k1, k2 or k3 (losses/policy_gradient.kl_estimate).
            kl_in: loss (β·KL added per token, GRPO) or reward (r - β Σ_t KL, PPO / OpenRLHF style).
            reference: π_ref for the KL when beta > 0: mode copy (a frozen model) or disable_adapter (the LoRA
                policy's base); a cache cannot hold log-probs of samples not drawn yet.
            mask_truncated: leave completions cut at max_new_tokens out of the loss (DAPO's overlong filtering).
            sample_seed: the sampler's seed (with the step and the prompt's index: module docstring).
            eval_max_new_tokens: completion length on evaluation prompt sets (None: max_new_tokens).
            log_samples_every_n_steps: write the first prompt's completions and rewards to TensorBoard's Text
                tab every this many optimizer steps (0: never).
            label_noise: {fraction, seed}: a labeller who errs: each binary training reward turns over (1 - r) with
                probability fraction, seeded by the query (objectives/online.py); None: none.
        """
        super().__init__(policy, optim, rewards, num_generations, max_new_tokens, temperature, top_p, top_k,
                         sample_seed, eval_max_new_tokens, log_samples_every_n_steps, label_noise)
        checks = [(num_generations >= 2, f"num_generations must be >= 2 (the baseline is the group's), not "
                                         f"{num_generations}"),
                  (epsilon > 0 and (epsilon_high is None or epsilon_high > 0), "epsilon and epsilon_high must be > 0"),
                  (beta >= 0, f"beta must be >= 0, not {beta}"),
                  (num_iterations >= 1, f"num_iterations must be >= 1, not {num_iterations}")]
        for ok, message in checks:
            if not ok:
                raise LitAlignError(message)
        self.advantage, self.loss_aggregation = advantage, loss_aggregation
        self.epsilon_low, self.epsilon_high = epsilon, epsilon if epsilon_high is None else epsilon_high
        self.beta, self.kl_estimator, self.kl_in = beta, kl_estimator, kl_in
        self.mask_truncated = mask_truncated
        self.num_iterations = num_iterations
        self.rollouts: dict[tuple[int, ...], Rollout] = {}  # the batch's data indices -> its stored rollout
        self.reference = online_reference(reference) if beta > 0 else None

    @property
    def repeat_steps(self) -> int:
        return self.num_iterations

    # -- the update ----------------------------------------------------------------------------------------
    def step(self, batch: dict) -> Sums:
        P, G = len(batch["records"]), self.num_generations
        window, iteration = divmod(self.trainer.global_step, self.num_iterations)
        key = tuple(batch["index"].tolist())
        stored = self.rollouts.get(key) if iteration > 0 else None
        if iteration > 0 and (stored is None or stored.window != window):
            raise LitAlignError(f"GRPO num_iterations {self.num_iterations}: no stored rollout for this batch's prompts "
                                f"at step {self.trainer.global_step}; the data module must give each optimizer step's "
                                "batches num_iterations times (AlignDataModule.connect(..., repeat_steps="
                                "objective.repeat_steps), as `lit_align fit` does)")
        if stored is None:
            contexts, completions, _, scores = self.rollout(batch)
        else:
            contexts, completions = stored.contexts, stored.completions
        rows = self.rows(contexts, completions)
        out = token_logps(self.model, rows["labels"], temperature=self.temperature, input_ids=rows["input_ids"],
                          attention_mask=rows["attention_mask"], use_cache=False)     # (N, L) fp32, with gradient
        mask = out.mask                                                                # (N, L) completion tokens
        ended = self.ended(completions)                                               # (N,) bool
        kl = None
        if self.beta > 0:
            ref = self.reference.token_logps(rows, self.model, self.temperature)     # (N, L) fp32, constants
            kl = kl_estimate(out.logps, ref, self.kl_estimator) * mask                # (N, L)
        if stored is None:  # a fresh rollout: π_old is the policy that sampled it, so ρ = 1 exactly
            rewards = scores.total.to(self.device)                                    # (N,)
            if kl is not None and self.kl_in == "reward":
                rewards = kl_shaped_rewards(rewards, kl.detach(), mask, self.beta)
            stored = Rollout(window, contexts, completions, rewards, dict(scores.per_function),
                             group_advantages(rewards.view(P, G), self.advantage).reshape(-1), out.logps.detach())
            if self.num_iterations > 1:
                self.rollouts = {k: r for k, r in self.rollouts.items() if r.window == window}  # drop older windows
                self.rollouts[key] = stored
        rewards, advantages, old_logps = (t.to(self.device) for t in (stored.rewards, stored.advantages,
                                                                       stored.old_logps))
        grouped = rewards.view(P, G)
        loss = clipped_policy_loss(out.logps, old_logps, advantages, mask, self.epsilon_low, self.epsilon_high)
        token_losses = loss.token_losses
        if kl is not None and self.kl_in == "loss":
            token_losses = add_kl_to_loss(token_losses, kl, mask, self.beta)
        keep = ended if self.mask_truncated else torch.ones_like(ended)               # (N,) rows in the loss
        loss_sum, count = aggregate(token_losses[keep], mask[keep], self.loss_aggregation, self.max_new_tokens)
        N, tokens = len(completions), mask.sum()
        sums = {
            "loss": (loss_sum, count),
            "reward": (rewards.detach().sum(), N),
            **{f"reward/{label}": (r.sum(), N) for label, r in stored.per_function.items()
               if len(stored.per_function) > 1},
            "rollout/reward_std": (grouped.std(-1).detach().sum(), P),
            "rollout/zero_spread": (zero_spread_share(grouped.detach()) * P, P),
            "rollout/advantage_abs": (advantages.abs().detach().sum(), N),
            "rollout/completion_length": (mask.sum().float(), N),
            "rollout/truncated": ((~ended).sum().float(), N),
            "rollout/entropy": (-(old_logps * mask).sum(), tokens),   # of the distribution that sampled them
            "policy/clip_fraction": ((loss.clipped & mask).sum().float(), tokens),
        }
        if kl is not None:
            sums["policy/kl"] = (kl.detach().sum(), tokens)
        return sums

    # -- the stored rollouts are part of the checkpoint (a run stopped mid-way through μ updates resumes them) ---
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.rollouts:
            checkpoint["grpo_rollouts"] = [(list(k), _to_cpu(asdict(r))) for k, r in self.rollouts.items()]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.rollouts = {tuple(k): Rollout(**r) for k, r in checkpoint.get("grpo_rollouts", [])}
