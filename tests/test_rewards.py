"""Reward functions for online RL (eval/rewards.py): scorers by name, Python functions by import path, weights, and
a one-paragraph LitAlignError for every bad spec or bad output."""

import math

import pytest
import torch

from lit_align.errors import LitAlignError
from lit_align.eval.rewards import CallableReward, RewardFunction, ScorerReward, build_reward, build_rewards

PROMPTS = ["What is 2 + 3?", [{"role": "user", "content": "What is 10 - 4?"}], "Name a fruit.", "Say hi."]
COMPLETIONS = ["The answer is 5.", "#### 6", "A sweet grape", "hello there!"]
RECORDS = [{"reference": "2 + 3 = 5\n#### 5"}, {"reference": "#### 7"}, {"reference": "grape"}, {"reference": "hi"}]


def length_reward(prompts, completions, records):
    """len(completion): 16, 6, 13, 12 on COMPLETIONS."""
    return [float(len(c)) for c in completions]


def test_scorer_rewards_score_each_completion():
    rewards = build_rewards(["final_number", {"name": "substring", "value": "sweet", "label": "says_sweet"},
                             "substring"])
    scores = rewards(PROMPTS, COMPLETIONS, RECORDS)
    assert rewards.labels == ["final_number", "says_sweet", "substring"]
    assert scores.per_function["final_number"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert scores.per_function["says_sweet"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert scores.per_function["substring"].tolist() == [0.0, 0.0, 1.0, 0.0]  # "hi" is not in "hello there!"
    assert all(t.dtype == torch.float32 and t.shape == (4,) for t in scores.per_function.values())
    assert scores.total.tolist() == [1.0, 0.0, 2.0, 0.0]


def test_a_function_by_import_path_and_weights_combine_exactly():
    rewards = build_rewards([{"name": "final_number", "weight": 2.0},
                             {"function": "test_rewards:length_reward", "weight": -0.25},
                             {"function": "test_rewards:length_reward", "label": "unweighted", "weight": 0}])
    assert rewards.labels == ["final_number", "length_reward", "unweighted"]
    assert isinstance(rewards.functions[1], CallableReward) and rewards.functions[1].fn is length_reward
    scores = rewards(PROMPTS, COMPLETIONS, RECORDS)
    assert scores.per_function["length_reward"].tolist() == [16.0, 6.0, 13.0, 12.0]
    # 2·[1, 0, 0, 0] - 0.25·[16, 6, 13, 12] + 0·[...]
    assert scores.total.dtype == torch.float32
    assert scores.total.tolist() == [2.0 - 4.0, -1.5, -3.25, -3.0]


def test_python_api_functions_and_reward_functions_pass():
    assert build_reward(length_reward).label == "length_reward"
    custom = CallableReward("mine", length_reward, weight=3.0)
    assert build_reward(custom) is custom and isinstance(custom, RewardFunction)
    assert isinstance(build_reward("match"), ScorerReward)
    scores = build_rewards(custom)(["p"], ["abc"], [{}])
    assert scores.total.tolist() == [9.0]


def test_duplicate_labels_and_bad_specs_are_refused():
    with pytest.raises(LitAlignError, match="the label substring is used twice"):
        build_rewards(["substring", {"name": "substring", "value": "x"}])
    with pytest.raises(LitAlignError, match="length_reward is used twice"):
        build_rewards([{"function": "test_rewards:length_reward"}, length_reward])
    with pytest.raises(LitAlignError, match="no reward function"):
        build_rewards([])
    with pytest.raises(LitAlignError, match="unknown scorer 'nosuch'"):
        build_rewards("nosuch")
    with pytest.raises(LitAlignError, match="weight must be a finite number"):
        build_reward({"name": "match", "weight": "high"})
    with pytest.raises(LitAlignError, match="not pattern"):
        build_reward({"function": "test_rewards:length_reward", "pattern": "x"})


@pytest.mark.parametrize("path, why", [
    ("nosuchmodule:f", "the module 'nosuchmodule' does not import .*ModuleNotFoundError"),
    ("os:nosuchfn", "os has no attribute 'nosuchfn'"),
    ("os:sep", "'os:sep' is a str, not a function"),
    ("os.path.join", "give it as an import path, package.module:function"),
])
def test_a_bad_import_path_is_named(path, why):
    with pytest.raises(LitAlignError, match=why) as caught:
        build_reward({"function": path})
    assert path in str(caught.value) and "\n" not in str(caught.value)


def nan_reward(prompts, completions, records):
    return [math.nan] * len(completions)


def _raises(prompts, completions, records):
    raise ValueError("could not parse")


@pytest.mark.parametrize("fn, why", [
    (_raises, r"raised ValueError: could not parse \(scoring 4 completions; the first prompt: 'What is 2 \+ 3\?'\)"),
    (lambda p, c, r: [1.0, 2.0, 3.0], "returned 3 rewards for 4 completions"),
    (lambda p, c, r: [0.0, math.nan, 1.0, 1.0], r"returned nan at index 1 \(completion '#### 6'\), not a finite"),
    (lambda p, c, r: [0.0, 1.0, -math.inf, 1.0], "returned -inf at index 2 .*such as 0.0 for a completion it cannot"),
    (lambda p, c, r: [0.0, 1.0, 1.0, 1e300], "returned 1e.300 at index 3"),  # finite, but not in float32
    (lambda p, c, r: None, "returned None, not a list of 4 numbers; return one float per completion"),
    (lambda p, c, r: [0.0, None, 1.0, 1.0], "returned None .* at index 1 .*not a number; return a float, such as 0.0"),
    (lambda p, c, r: "1.0", "returned a str, not a list of 4 numbers"),
    (lambda p, c, r: [0.0, 1.0, "1.0", 1.0], r"returned '1.0' \(str\) at index 2"),
    (lambda p, c, r: torch.zeros(4, 1), r"returned a tensor of shape \(4, 1\)"),
])
def test_bad_output_is_one_paragraph_naming_the_function(fn, why):
    rewards = build_rewards([CallableReward("judge", fn)])
    with pytest.raises(LitAlignError, match=why) as caught:
        rewards(PROMPTS, COMPLETIONS, RECORDS)
    assert str(caught.value).startswith("reward 'judge'") and "\n" not in str(caught.value)


def test_a_scorer_that_fails_names_its_label_and_good_outputs_convert():
    with pytest.raises(LitAlignError, match="the first prompt: 'user: What is 10 - 4\\?'"):  # chat messages
        build_rewards([CallableReward("judge", _raises)])(PROMPTS[1:], COMPLETIONS[1:], RECORDS[1:])
    with pytest.raises(LitAlignError, match=r"reward 'match' raised KeyError: 'match'"):
        build_rewards("match")(PROMPTS, COMPLETIONS, RECORDS)  # these records have no `match` field
    with pytest.raises(LitAlignError, match=r"^reward 'nan_judge' \(test_rewards:nan_reward\) returned nan at index 0"):
        build_rewards({"function": "test_rewards:nan_reward", "label": "nan_judge"})(["p"], [""], [{}])
    tensor_out = build_rewards([CallableReward("t", lambda p, c, r: torch.tensor([1, 0, 1, 0]))])
    bools = build_rewards([CallableReward("b", lambda p, c, r: [True, False, True, 0])])
    assert tensor_out(PROMPTS, COMPLETIONS, RECORDS).total.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert bools(PROMPTS, COMPLETIONS, RECORDS).total.tolist() == [1.0, 0.0, 1.0, 0.0]
