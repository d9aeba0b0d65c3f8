"""Reward functions for online RL (the GRPO family): each step samples G completions per prompt and scores every
completion with one or more reward functions; the weighted sum of their rewards is the reward the advantages are
computed from, and each function is logged under its label.

In YAML a reward function is
    a scorer (scorers.py), by name or mapping: the reward is the scorer's value for (record, completion)
        rewards: [final_number, {name: regex, pattern: "\\bsweet\\b", label: says_sweet, weight: 0.5}]
    a Python function by import path, called once per batch of completions (TRL's signature):
        rewards: [{function: "my_pkg.rewards:brevity", weight: -0.01}]
        def brevity(prompts: list, completions: list[str], records: list[dict]) -> list[float]
    where prompts are the PromptRecord.prompt values (text or chat messages) and records the rows scorers read
    (with `reference`), one of each per completion.

Every entry may carry `weight` (default 1.0; 0 logs a function without training on it) and `label` (the logged
name; default the scorer's name or the function's __name__). A reward is a finite number for every completion: a
function that raises, returns the wrong count, None, a non-number, NaN or inf stops the run with one paragraph
naming it.

    a trained reward model (objectives/reward_model.py's RewardModel: its exported directory, a hub name, or a
    checkpoint), scoring prompt + completion tokenized as `lit_align score` does (the reward model's tokenizer and
    chat template; the end token after the completion), loaded on first use:
        rewards: [{reward_model: logs/reward_model/version_0/hf_model, weight: 1.0, max_length: 512}]
"""

from __future__ import annotations

import importlib
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch

from lit_align.errors import LitAlignError
from lit_align.eval.scorers import Scorer, build_scorer


@runtime_checkable
class RewardFunction(Protocol):
    """What RewardFunctions calls: N completions (with their prompts and records) -> N rewards."""

    label: str
    weight: float

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> list[float]: ...


@dataclass
class ScorerReward:
    """A generation scorer as a reward: scorer(record, completion) for each completion."""

    scorer: Scorer
    weight: float = 1.0

    @property
    def label(self) -> str:
        return self.scorer.label

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> list[float]:
        return [self.scorer(record, text) for record, text in zip(records, completions)]


@dataclass
class CallableReward:
    """A Python function(prompts, completions, records) -> list[float]; `path` is its import path (for messages)."""

    label: str
    fn: Callable[[list, list, list], list]
    weight: float = 1.0
    path: str = ""

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> list[float]:
        return self.fn(prompts, completions, records)


@dataclass
class RewardModelReward:
    """A trained reward model's score of prompt + completion (modeling/reward_models.py), one per completion."""

    path: str
    label: str = "reward_model"
    weight: float = 1.0
    max_length: int = 512
    batch_size: int = 16

    def __post_init__(self):
        self._model = self._tokenizer = None

    def _load(self):
        if self._model is None:
            from lit_align.modeling.reward_models import load_reward_model

            self._model, self._tokenizer = load_reward_model(self.path, what=f"reward {self.label!r}: reward_model")
            self._model.requires_grad_(False)
        return self._model, self._tokenizer

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> list[float]:
        from lit_align.data.collate import collate
        from lit_align.data.records import Example
        from lit_align.data.tokenize import Tokenizer, TokenizeSpec
        from lit_align.modeling.reward_models import sequence_rewards

        model, tokenizer = self._load()
        tok = Tokenizer(tokenizer, TokenizeSpec(max_length=self.max_length))
        device = next(model.parameters()).device
        rows = []
        for prompt, text in zip(prompts, completions):
            tokenized = tok(Example(prompt, [text]))
            if isinstance(tokenized, str):  # data/tokenize.py's reason (e.g. nothing left after truncation)
                raise LitAlignError(f"reward {self.label!r}: the reward model cannot score a completion ({tokenized}); "
                                    f"raise max_length (now {self.max_length})")
            rows.append(tokenized)
        out: list[float] = []
        for s in range(0, len(rows), self.batch_size):
            batch = collate(list(enumerate(rows[s: s + self.batch_size])), tokenizer.pad_token_id)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out += sequence_rewards(model, batch).tolist()                   # (n,)
        return out


@dataclass
class RewardScores:
    """The rewards of N completions: each function's (per_function[label], (N,) float32) and their weighted sum
    (total, (N,) float32, Σ_f weight_f · r_f), on the CPU."""

    per_function: dict[str, torch.Tensor]
    total: torch.Tensor


def import_function(path: str) -> Callable:
    """The callable at "package.module:name" (name may be dotted: "module:Class.method")."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise LitAlignError(f"reward function {path!r}: give it as an import path, package.module:function")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a missing module, or one that fails while importing
        raise LitAlignError(f"reward function {path!r}: the module {module_name!r} does not import "
                            f"({type(e).__name__}: {e}); check the path and that the module is on PYTHONPATH") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LitAlignError(f"reward function {path!r}: {getattr(obj, '__name__', module_name)} has no "
                                f"attribute {part!r}; check the name after the ':'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LitAlignError(f"reward function {path!r} is a {type(obj).__name__}, not a function; name a function "
                            "(prompts, completions, records) -> list[float]")
    return obj


def build_reward(spec: "str | dict | RewardFunction | Callable") -> RewardFunction:
    """A RewardFunction from its YAML form (a scorer name, {name, label?, weight?, **options}, or
    {function, label?, weight?}); a RewardFunction passes through and a plain function is wrapped (Python API)."""
    if isinstance(spec, RewardFunction):
        return spec
    if hasattr(spec, "__dict__") and not isinstance(spec, dict) and not callable(spec):  # a jsonargparse Namespace
        spec = {k: v for k, v in vars(spec).items() if not k.startswith("_")}
    if callable(spec):
        return CallableReward(getattr(spec, "__name__", type(spec).__name__), spec)
    options = dict(spec) if isinstance(spec, dict) else {"name": spec}
    weight = options.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise LitAlignError(f"reward {spec!r}: the weight must be a finite number, got {weight!r}")
    if "reward_model" in options:
        path = options.pop("reward_model")
        unknown = set(options) - {"label", "max_length", "batch_size"}
        if unknown or not isinstance(path, str):
            raise LitAlignError(f"reward {spec!r}: a reward model reward takes reward_model (a directory, hub name or "
                                "checkpoint), label, weight, max_length and batch_size"
                                + (f", not {', '.join(sorted(unknown))}" if unknown else ""))
        return RewardModelReward(path, str(options.get("label", "reward_model")), float(weight),
                                 int(options.get("max_length", 512)), int(options.get("batch_size", 16)))
    if "function" not in options:
        return ScorerReward(build_scorer(options), float(weight))  # the scorer says what is wrong with the rest
    path = options.pop("function")
    if set(options) - {"label"}:
        raise LitAlignError(f"reward {spec!r}: a function reward takes function, label and weight, not "
                            f"{', '.join(sorted(set(options) - {'label'}))}")
    if not isinstance(path, str):
        raise LitAlignError(f"reward {spec!r}: `function` must be an import path, package.module:function")
    fn = import_function(path)
    label = str(options.get("label", getattr(fn, "__name__", path.rpartition(":")[2])))
    if not label or "/" in label:
        raise LitAlignError(f"reward {spec!r}: a label must be non-empty and contain no '/'")
    return CallableReward(label, fn, float(weight), path)


@dataclass
class RewardFunctions:
    """The run's reward functions; calling them scores N completions (RewardScores)."""

    functions: list[RewardFunction]

    @property
    def labels(self) -> list[str]:
        return [f.label for f in self.functions]

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> RewardScores:
        """Score N completions: prompts[i], completions[i] and records[i] belong together."""
        if not len(prompts) == len(completions) == len(records):
            raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions and {len(records)} records")
        per_function = {f.label: _rewards(f, prompts, completions, records) for f in self.functions}
        return RewardScores(per_function, self._total(per_function))

    def _total(self, per_function: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) float32: Σ_f weight_f · r_f, summed in float64."""
        total = torch.zeros(len(next(iter(per_function.values()))), dtype=torch.float64)
        for f in self.functions:
            total += f.weight * per_function[f.label].double()
        return total.float()

    def flipped(self, scores: RewardScores, flips: dict[str, torch.Tensor]) -> RewardScores:
        """`scores` as a labeller who makes mistakes gives them (label noise, data/label_noise.py): each function's
        rewards at `flips[label]` ((N,) bool) turned over, r -> 1 - r, and the total summed again. Only a yes/no
        answer can be turned over: a reward other than 0 or 1 is refused."""
        for label, r in scores.per_function.items():
            bad = ((r != 0) & (r != 1)).nonzero()
            if len(bad):
                raise LitAlignError(f"label_noise flips binary rewards (0 or 1), but reward {label!r} gave "
                                    f"{float(r[int(bad[0])])!r}; use a 0/1 reward (e.g. a scorer such as ab_letter or "
                                    "match), or no label_noise")
        per_function = {label: torch.where(flips[label], 1 - r, r) for label, r in scores.per_function.items()}
        return RewardScores(per_function, self._total(per_function))


def build_rewards(specs: "list | str | dict | RewardFunction | Callable | None") -> RewardFunctions:
    """RewardFunctions from a list of YAML forms (or one); none at all, or two with the same label, is refused."""
    functions = [build_reward(s) for s in (specs if isinstance(specs, (list, tuple)) else [specs] if specs else [])]
    if not functions:
        raise LitAlignError("rewards: no reward function given; name a scorer (e.g. final_number) or a "
                            "{function: package.module:function}")
    labels = [f.label for f in functions]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise LitAlignError(f"rewards: the label {', '.join(twice)} is used twice; give each a `label`")
    return RewardFunctions(functions)


def _rewards(f: RewardFunction, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
    """f's rewards as a (N,) float32 tensor, or a one-paragraph LitAlignError saying what it returned."""
    n, name = len(completions), f"reward {f.label!r}" + (f" ({f.path})" if getattr(f, "path", "") else "")
    try:
        out = f(prompts, completions, records)
    except Exception as e:  # noqa: BLE001 - any failure of the user's function is said in one paragraph
        first = "" if not prompts else prompts[0] if isinstance(prompts[0], str) else "\n".join(  # chat messages
            f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict) else str(m) for m in prompts[0])
        raise LitAlignError(f"{name} raised {type(e).__name__}: {e} (scoring {n} completions; the first prompt: "
                            f"{first[:200]!r}); fix the function, or make it return 0.0 for what it cannot "
                            "score") from e
    if isinstance(out, torch.Tensor) and out.dim() == 1:
        out = out.tolist()
    if out is None or isinstance(out, (str, bytes, dict, torch.Tensor)) or not hasattr(out, "__len__"):
        what = (f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                else "None" if out is None else f"a {type(out).__name__}")
        raise LitAlignError(f"{name} returned {what}, not a list of {n} numbers; return one float per completion "
                            "(0.0 for one it cannot score)")
    if len(out) != n:
        raise LitAlignError(f"{name} returned {len(out)} rewards for {n} completions; return one per completion")
    values = []
    for i, value in enumerate(out):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if not isinstance(value, numbers.Real):
            raise LitAlignError(f"{name} returned {value!r} ({type(value).__name__}) at index {i} (completion "
                                f"{completions[i][:80]!r}), not a number; return a float, such as 0.0 for a "
                                "completion it cannot score")
        values.append(float(value))
    rewards = torch.tensor(values, dtype=torch.float32)
    bad = (~torch.isfinite(rewards)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise LitAlignError(f"{name} returned {out[i]!r} at index {i} (completion {completions[i][:80]!r}), not a "
                            "finite number; return a finite number, such as 0.0 for a completion it cannot parse")
    return rewards
