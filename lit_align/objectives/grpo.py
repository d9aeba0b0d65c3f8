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

     Each sample is used for one update (π_old = π_θ, detached), so ρ = 1 exactly and the gradient is -A_i ∇log π_θ:
     REINFORCE with a group baseline. KL_it estimates KL(π_θ || π_ref) per token (k1, k2, k3);
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

import hashlib
from typing import Literal

import torch

from lit_align.data.prompts import prompt_text
from lit_align.errors import LitAlignError
from lit_align.eval.rewards import RewardFunctions, build_rewards
from lit_align.losses.likelihood import nll
from lit_align.losses.policy_gradient import (add_kl_to_loss, aggregate, clipped_policy_loss, group_advantages,
                                              kl_estimate, kl_shaped_rewards, zero_spread_share)
from lit_align.modeling.generation import generate_ids, sample_ids
from lit_align.modeling.logprobs import IGNORE, batch_logps, batch_token_logps, token_logps
from lit_align.modeling.models import ModelSpec
from lit_align.objectives.base import Objective, OptimSpec, Sums, pair_sums
from lit_align.objectives.reference import ReferenceSpec, build_reference


class GRPO(Objective):
    progress_metrics = ("loss", "reward")
    compute_only_settings = Objective.compute_only_settings | {"eval_max_new_tokens", "log_samples_every_n_steps"}

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
        """
        super().__init__(policy, optim)
        if rewards is None:
            raise LitAlignError("GRPO needs rewards: e.g. rewards: [match], or {function: mymodule:reward} "
                                "(lit_align/eval/rewards.py)")
        self.rewards: RewardFunctions = build_rewards(rewards)
        checks = [(num_generations >= 2, f"num_generations must be >= 2 (the baseline is the group's), not "
                                         f"{num_generations}"),
                  (max_new_tokens >= 1, f"max_new_tokens must be >= 1, not {max_new_tokens}"),
                  (temperature > 0, f"temperature must be > 0 (the log-probs are of softmax(logits / T)), not "
                                    f"{temperature}"),
                  (0 < top_p <= 1, f"top_p must be in (0, 1], not {top_p}"),
                  (top_k >= 0, f"top_k must be >= 0 (0: off), not {top_k}"),
                  (epsilon > 0 and (epsilon_high is None or epsilon_high > 0), "epsilon and epsilon_high must be > 0"),
                  (beta >= 0, f"beta must be >= 0, not {beta}")]
        for ok, message in checks:
            if not ok:
                raise LitAlignError(message)
        if beta > 0 and reference is not None and reference.mode == "cache":
            raise LitAlignError("reference.mode: cache cannot hold the log-probs of completions sampled during "
                                "training; use mode copy or disable_adapter")
        self.num_generations, self.max_new_tokens = num_generations, max_new_tokens
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.advantage, self.loss_aggregation = advantage, loss_aggregation
        self.epsilon_low, self.epsilon_high = epsilon, epsilon if epsilon_high is None else epsilon_high
        self.beta, self.kl_estimator, self.kl_in = beta, kl_estimator, kl_in
        self.mask_truncated, self.sample_seed = mask_truncated, sample_seed
        self.eval_max_new_tokens = eval_max_new_tokens or max_new_tokens
        self.log_samples_every_n_steps = log_samples_every_n_steps
        self.reference = build_reference(reference) if beta > 0 else None
        self._end_id: int | None = None

    def layout_name(self) -> str:
        return "prompt"

    @property
    def end_id(self) -> int | None:
        """The token that ends a completion: the data's end token (data.end_token; the tokenizer's EOS)."""
        if self._end_id is None:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            spec = getattr(dm, "spec", None)
            name = getattr(spec, "end_token", None)
            self._end_id = self.tokenizer.convert_tokens_to_ids(name) if name else self.tokenizer.eos_token_id
        return self._end_id

    # -- sampling ------------------------------------------------------------------------------------------
    def prompt_seed(self, index: int) -> int:
        """The sampler's seed for the prompt at data index `index` in this optimizer step."""
        key = f"{self.sample_seed},{self.trainer.global_step},{index}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 2 ** 63

    def sample(self, batch: dict) -> tuple[list[list[int]], list[list[int]]]:
        """(contexts, completions) of the batch's N = P·G rows, prompt-major (rows [pG, (p+1)G) are prompt p's)."""
        contexts, completions = [], []
        synced = self.trainer.world_size > 1 and "FSDP" in type(self.trainer.strategy).__name__
        for index, record in zip(batch["index"].tolist(), batch["records"]):
            ids = sample_ids(self.model, record.context, self.num_generations, self.tokenizer.pad_token_id,
                             self.end_id, self.max_new_tokens, self.temperature, self.top_p, self.top_k,
                             seed=self.prompt_seed(index), synced_gpus=synced)
            contexts += [record.context] * self.num_generations
            completions += ids
        return contexts, completions

    def rows(self, contexts: list[list[int]], completions: list[list[int]]) -> dict:
        """Model inputs of context + completion rows, right-padded (natural positions); labels are the completion's
        tokens, its end token included, from each completion's length (not from the pad id: pad may equal eos)."""
        width = max(len(c) + len(y) for c, y in zip(contexts, completions))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(contexts), width), pad, dtype=torch.long)             # (N, L)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        labels = torch.full((len(contexts), width), IGNORE, dtype=torch.long)
        for i, (c, y) in enumerate(zip(contexts, completions)):
            ids[i, : len(c) + len(y)] = torch.tensor(c + y)
            mask[i, : len(c) + len(y)] = 1
            labels[i, len(c): len(c) + len(y)] = torch.tensor(y, dtype=torch.long)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "labels": labels.to(self.device)}

    def _score(self, batch: dict, completions: list[list[int]], repeat: int):
        records = [r for r in batch["records"] for _ in range(repeat)]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        scores = self.rewards([r.prompt for r in records], texts, [r.record for r in records])
        return texts, scores

    # -- the update ----------------------------------------------------------------------------------------
    def step(self, batch: dict) -> Sums:
        if "records" not in batch:
            raise LitAlignError("GRPO trains on prompts (the prompt layout); got a batch of continuations")
        P, G = len(batch["records"]), self.num_generations
        contexts, completions = self.sample(batch)
        texts, scores = self._score(batch, completions, G)
        rows = self.rows(contexts, completions)
        out = token_logps(self.model, rows["labels"], temperature=self.temperature, input_ids=rows["input_ids"],
                          attention_mask=rows["attention_mask"], use_cache=False)     # (N, L) fp32, with gradient
        mask = out.mask                                                                # (N, L) completion tokens
        ended = torch.tensor([bool(y) and y[-1] == self.end_id for y in completions], device=self.device)  # (N,)
        rewards = scores.total.to(self.device)                                        # (N,)
        kl = None
        if self.beta > 0:
            ref = self.reference.token_logps(rows, self.model, self.temperature)     # (N, L) fp32, constants
            kl = kl_estimate(out.logps, ref, self.kl_estimator) * mask                # (N, L)
            if self.kl_in == "reward":
                rewards = kl_shaped_rewards(rewards, kl.detach(), mask, self.beta)
        grouped = rewards.view(P, G)
        advantages = group_advantages(grouped, self.advantage).reshape(-1)            # (N,)
        loss = clipped_policy_loss(out.logps, out.logps.detach(), advantages, mask, self.epsilon_low,
                                   self.epsilon_high)
        token_losses = loss.token_losses
        if kl is not None and self.kl_in == "loss":
            token_losses = add_kl_to_loss(token_losses, kl, mask, self.beta)
        keep = ended if self.mask_truncated else torch.ones_like(ended)               # (N,) rows in the loss
        loss_sum, count = aggregate(token_losses[keep], mask[keep], self.loss_aggregation, self.max_new_tokens)
        self._maybe_log_samples(batch, texts, scores)
        N, tokens = len(completions), mask.sum()
        sums = {
            "loss": (loss_sum, count),
            "reward": (rewards.detach().sum(), N),
            **{f"reward/{label}": (r.sum(), N) for label, r in scores.per_function.items()
               if len(scores.per_function) > 1},
            "rollout/reward_std": (grouped.std(-1).detach().sum(), P),
            "rollout/zero_spread": (zero_spread_share(grouped.detach()) * P, P),
            "rollout/advantage_abs": (advantages.abs().detach().sum(), N),
            "rollout/completion_length": (mask.sum().float(), N),
            "rollout/truncated": ((~ended).sum().float(), N),
            "rollout/entropy": (-(out.logps.detach() * mask).sum(), tokens),
            "policy/clip_fraction": ((loss.clipped & mask).sum().float(), tokens),
        }
        if kl is not None:
            sums["policy/kl"] = (kl.detach().sum(), tokens)
        return sums

    def _maybe_log_samples(self, batch: dict, texts: list[str], scores) -> None:
        every = self.log_samples_every_n_steps
        trainer = self._trainer
        if not every or trainer is None or trainer.global_step % every or not trainer.is_global_zero:
            return
        writer = next((lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_text")), None)
        if writer is None:
            return
        prompt = prompt_text(batch["records"][0].prompt).replace("\n", " ")
        lines = [f"**prompt** {prompt}", "", "| reward | completion |", "|---|---|"]
        for text, r in zip(texts[: self.num_generations], scores.total[: self.num_generations].tolist()):
            lines.append(f"| {r:.3g} | {text.replace('|', '/').replace(chr(10), ' ')} |")
        writer.add_text("train/samples", "\n".join(lines), global_step=trainer.global_step)

    # -- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_sums(self, batch: dict) -> Sums:
        """Prompt sets: greedy completions scored by the rewards; pair sets: the policy's pair metrics; sets of one
        continuation: its per-token NLL."""
        if "records" in batch:
            contexts = [r.context for r in batch["records"]]
            completions = generate_ids(self.model, contexts, self.tokenizer.pad_token_id, self.end_id,
                                       self.eval_max_new_tokens, batch_size=len(contexts))
            _, scores = self._score(batch, completions, 1)
            n = len(contexts)
            return {"reward": (scores.total.sum(), n),
                    **{f"reward/{label}": (r.sum(), n) for label, r in scores.per_function.items()
                       if len(scores.per_function) > 1},
                    "rollout/completion_length": (torch.tensor(float(sum(len(y) for y in completions))), n)}
        if batch.get("num_continuations", 1) == 2:
            return pair_sums(batch_logps(self.model, batch).logps, batch.get("contrast", False))
        out = batch_token_logps(self.model, batch)
        loss_sum, tokens = nll(out.logps, out.mask)
        return {"nll": (loss_sum.sum(), tokens.sum())}
