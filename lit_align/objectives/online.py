"""What every online objective shares (objectives/grpo.py, objectives/online_dpo.py): prompts in, completions
sampled from the current policy, scored by reward functions.

- Sampling: a prompt's completions are drawn by `sample_ids` (modeling/generation.py) with a generation config built
  for the purpose (temperature, top_p, top_k; the model's own config replaced), seeded by (sample_seed, the optimizer
  step, the prompt's index in the data): never by a global RNG, so batch size, accumulation, devices and a resume
  from a checkpoint do not change what is sampled.
- Model inputs: context + completion rows, right-padded (natural positions), the completion's tokens the targets,
  its end token included, from each completion's length (pad may equal eos).
- Rewards: eval/rewards.py (scorers by name, Python functions, weights). `label_noise: {fraction, seed}` makes the
  labeller err: each binary reward of a training sample turns over (r -> 1 - r) with probability `fraction`, drawn
  from (seed, the optimizer step, the prompt's index in the data, the completion's place in its group, the reward's
  label) (data/label_noise.py), so the same samples get the same mistakes after a resume; evaluation is never noisy.
- Evaluation: prompt sets get greedy completions scored by the rewards ({split}/reward); pair sets (`kind: pair`)
  the policy's pair metrics; sets of one continuation its per-token NLL.
- Every `log_samples_every_n_steps`, the first prompt's completions and rewards go to TensorBoard's Text tab.
"""

from __future__ import annotations

import hashlib

import torch

from lit_align.data.label_noise import LabelNoise, as_label_noise
from lit_align.data.prompts import prompt_text
from lit_align.errors import LitAlignError
from lit_align.eval.rewards import RewardFunctions, build_rewards
from lit_align.losses.likelihood import nll
from lit_align.modeling.generation import generate_ids, sample_ids
from lit_align.modeling.logprobs import IGNORE, batch_logps, batch_token_logps
from lit_align.modeling.models import ModelSpec
from lit_align.modeling.sharding import ranks_pass_together
from lit_align.objectives.base import Objective, OptimSpec, Sums, pair_sums
from lit_align.objectives.reference import Reference, ReferenceSpec, build_reference


def online_reference(spec: ReferenceSpec | None) -> Reference:
    """An online objective's reference: a frozen copy or the adapter-disabled policy (its log-probs are of samples not
    drawn yet, which a precomputed cache cannot hold)."""
    if spec is not None and spec.mode == "cache":
        raise LitAlignError("reference.mode: cache cannot hold the log-probs of completions sampled during "
                            "training; use mode copy or disable_adapter")
    return build_reference(spec)


class OnlineObjective(Objective):
    progress_metrics = ("loss", "reward")
    compute_only_settings = Objective.compute_only_settings | {"eval_max_new_tokens", "log_samples_every_n_steps"}
    allow_empty_steps = True  # a step whose samples all tie (online DPO) or are all masked trains nothing
    added_settings = {"label_noise": None}  # (added after the first online checkpoints)

    def __init__(self, policy: ModelSpec | None, optim: OptimSpec | None, rewards, num_generations: int,
                 max_new_tokens: int, temperature: float, top_p: float, top_k: int, sample_seed: int,
                 eval_max_new_tokens: int | None, log_samples_every_n_steps: int,
                 label_noise: LabelNoise | None = None):
        super().__init__(policy, optim)
        if rewards is None:
            raise LitAlignError(f"{type(self).__name__} needs rewards: e.g. rewards: [match], or "
                                "{function: mymodule:reward} (lit_align/eval/rewards.py)")
        self.rewards: RewardFunctions = build_rewards(rewards)
        checks = [(max_new_tokens >= 1, f"max_new_tokens must be >= 1, not {max_new_tokens}"),
                  (temperature > 0, f"temperature must be > 0 (the log-probs are of softmax(logits / T)), not "
                                    f"{temperature}"),
                  (0 < top_p <= 1, f"top_p must be in (0, 1], not {top_p}"),
                  (top_k >= 0, f"top_k must be >= 0 (0: off), not {top_k}")]
        for ok, message in checks:
            if not ok:
                raise LitAlignError(message)
        self.num_generations, self.max_new_tokens = num_generations, max_new_tokens
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.sample_seed = sample_seed
        self.eval_max_new_tokens = eval_max_new_tokens or max_new_tokens
        self.log_samples_every_n_steps = log_samples_every_n_steps
        self.label_noise = as_label_noise(label_noise, type(self).__name__)
        self.labels_flipped = 0  # training rewards the label noise turned over, in this process (a sweep's result)
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
        synced = ranks_pass_together(self.trainer)  # ranks generate in step
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

    def score(self, batch: dict, completions: list[list[int]], repeat: int):
        records = [r for r in batch["records"] for _ in range(repeat)]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        scores = self.rewards([r.prompt for r in records], texts, [r.record for r in records])
        return texts, scores

    def ended(self, completions: list[list[int]]) -> torch.Tensor:
        """(N,) bool: the completion closed with the end token (else it was cut at max_new_tokens)."""
        return torch.tensor([bool(y) and y[-1] == self.end_id for y in completions], device=self.device)

    def rollout(self, batch: dict):
        """Sample G completions of each of the batch's prompts and score them -> (contexts, completions, texts,
        RewardScores), N = P·G rows, prompt-major."""
        if "records" not in batch:
            raise LitAlignError(f"{type(self).__name__} trains on prompts (the prompt layout); got a batch of "
                                "continuations")
        contexts, completions = self.sample(batch)
        texts, scores = self.score(batch, completions, self.num_generations)
        scores = self.labeller_mistakes(batch, scores)
        self._maybe_log_samples(batch, texts, scores)
        return contexts, completions, texts, scores

    def labeller_mistakes(self, batch: dict, scores):
        """The rollout's rewards with `label_noise`'s mistakes (module docstring): each binary reward turned over with
        probability fraction, keyed by the query (step, prompt index, completion, reward label), not by any RNG."""
        noise = self.label_noise
        if noise is None or noise.fraction == 0:
            return scores
        step = self.trainer.global_step
        queries = [f"{step},{index},{j}" for index in batch["index"].tolist() for j in range(self.num_generations)]
        flips = {label: torch.tensor([noise.flips(f"{q},{label}") for q in queries], dtype=torch.bool)
                 for label in scores.per_function}
        self.labels_flipped += sum(int(f.sum()) for f in flips.values())
        return self.rewards.flipped(scores, flips)

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
            _, scores = self.score(batch, completions, 1)
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
