"""Policy-gradient losses (losses/policy_gradient.py) against hand-computed numbers, and their invariants."""

import math

import pytest
import torch

from lit_align.losses.policy_gradient import (ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS, add_kl_to_loss,
                                              aggregate, clipped_policy_loss, group_advantages, kl_estimate,
                                              kl_shaped_rewards, zero_spread_share)

T, F = True, False


def _close(actual, expected, atol=1e-6):
    """Elementwise equality of a tensor with a (nested) list of hand-computed numbers."""
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)

# -- advantages -----------------------------------------------------------------------------------------------
# Two prompts, G = 4: group 0 has rewards 1, 0, 0, 1 (mean 0.5, deviations ±0.5, Bessel std sqrt(4·0.25/3) =
# sqrt(1/3)); group 1 is all 2 (no spread: advantages 0 under every estimator).
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
GRPO_A = 0.5 / (3 ** -0.5 + 1e-4)      # 0.8658..., = 0.5·sqrt(3) = 0.866 up to eps


@pytest.mark.parametrize("estimator, a", [
    ("grpo", GRPO_A),
    ("dr_grpo", 0.5),                   # r - mean
    ("rloo", 2 / 3),                    # 1 - (0 + 0 + 1)/3 = 2/3;  0 - (1 + 0 + 1)/3 = -2/3
])
def test_group_advantages_hand_computed(estimator, a):
    adv = group_advantages(REWARDS, estimator)
    assert adv.shape == (2, 4)
    assert adv[0].tolist() == pytest.approx([a, -a, -a, a], abs=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]            # zero spread: exactly 0, no NaN
    assert torch.isfinite(adv).all()


def test_grpo_without_eps_is_the_standard_score():
    assert group_advantages(REWARDS, "grpo", eps=0.0)[0, 0].item() == pytest.approx(0.5 * math.sqrt(3), abs=1e-6)


def test_rloo_is_leave_one_out_and_a_multiple_of_dr_grpo():
    # [3, 0, 0]: 3 - (0 + 0)/2 = 3;  0 - (3 + 0)/2 = -1.5
    assert group_advantages(torch.tensor([[3.0, 0.0, 0.0]]), "rloo")[0].tolist() == pytest.approx([3.0, -1.5, -1.5])
    rewards = torch.tensor([[0.3, 1.0, -2.0, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0, 4.0]])
    torch.testing.assert_close(group_advantages(rewards, "rloo"), 5 / 4 * group_advantages(rewards, "dr_grpo"))


def test_integer_rewards_are_accepted():
    assert group_advantages(torch.tensor([[1, 0]]), "dr_grpo")[0].tolist() == [0.5, -0.5]


def test_zero_spread_share():
    assert zero_spread_share(REWARDS).item() == 0.5
    assert zero_spread_share(torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [3.0, 3.0]])).item() == 0.75


@pytest.mark.parametrize("estimator", list(ADVANTAGE_ESTIMATORS))
def test_one_sample_per_prompt_raises(estimator):
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        group_advantages(torch.tensor([[1.0], [0.0]]), estimator)


def test_unknown_estimator_lists_the_choices():
    with pytest.raises(ValueError, match="grpo, dr_grpo, rloo"):
        group_advantages(REWARDS, "ppo")


# -- KL estimators --------------------------------------------------------------------------------------------
# logps (-1, -2), ref (-2, -1): d = ref - logps = (-1, 1)


@pytest.mark.parametrize("estimator, expected", [
    ("k1", [1.0, -1.0]),                                 # -d: negative on the second token
    ("k2", [0.5, 0.5]),                                  # d²/2
    ("k3", [0.36787944117144233, 0.7182818284590451]),   # e^-1 + 1 - 1,  e - 1 - 1
])
def test_kl_estimators_hand_computed(estimator, expected):
    out = kl_estimate(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]]), estimator)
    assert out.shape == (1, 2)
    assert out[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_kl_estimators_zero_at_the_reference_and_k3_nonnegative():
    logps = torch.linspace(-8, 0, 41).reshape(1, -1)
    for name in KL_ESTIMATORS:
        assert kl_estimate(logps, logps.clone(), name).abs().max().item() == 0.0
    grid = torch.linspace(-6, 6, 61)
    ref, pol = torch.meshgrid(grid, grid, indexing="ij")
    assert (kl_estimate(pol, ref, "k3") >= 0).all()
    assert (kl_estimate(pol, ref, "k2") >= 0).all()
    assert (kl_estimate(pol, ref, "k1") < 0).any()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(pol, ref, "k4")


def test_kl_shaped_rewards_and_kl_in_the_loss():
    token_kl = torch.tensor([[0.5, 0.25, 9.0], [-0.5, 1.0, 9.0]], requires_grad=True)   # 9.0: padding, ignored
    mask = torch.tensor([[T, T, F], [T, T, F]])
    shaped = kl_shaped_rewards(torch.tensor([1.0, 0.0]), token_kl, mask, beta=0.1)
    assert shaped.tolist() == pytest.approx([0.925, -0.05])      # 1 - 0.1·0.75,  0 - 0.1·0.5
    assert not shaped.requires_grad
    out = add_kl_to_loss(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]), token_kl, mask, beta=0.1)
    _close(out.detach(), [[1.05, 2.025, 0.0], [-0.05, 0.1, 0.0]])
    out.sum().backward()
    _close(token_kl.grad, [[0.1, 0.1, 0.0], [0.1, 0.1, 0.0]])


# -- clipped surrogate ----------------------------------------------------------------------------------------
# Two completions, A = (2, -1), with 2 and 1 tokens. First pass: ρ = 1, l_t = -A_i, ∇ l_t = -A_i ∇log π.
ADV = torch.tensor([2.0, -1.0])
MASK = torch.tensor([[T, T, F], [T, F, F]])


@pytest.mark.parametrize("mode, loss, grad", [
    ("token_mean", -1.0, [[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]),          # (-2 - 2 + 1)/3; -A/3
    ("sequence_mean", -0.5, [[-0.5, -0.5, 0.0], [0.5, 0.0, 0.0]]),           # (mean(-2, -2) + 1)/2; -A/(n_i·2)
    ("constant_length", -3 / 8, [[-0.25, -0.25, 0.0], [0.125, 0.0, 0.0]]),   # -3/(2·4); -A/8
])
def test_first_pass_is_reinforce_with_a_baseline(mode, loss, grad):
    logps = torch.tensor([[-0.7, -1.3, -2.0], [-0.1, 0.0, 0.0]], requires_grad=True)
    out = clipped_policy_loss(logps, logps.detach(), ADV, MASK)
    assert torch.equal(out.ratio, torch.ones(2, 3))
    assert not out.clipped.any()
    assert out.token_losses.tolist() == [[-2.0, -2.0, 0.0], [1.0, 0.0, 0.0]]
    loss_sum, count = aggregate(out.token_losses, MASK, mode, max_completion_length=4)
    (loss_sum / count).backward()
    assert (loss_sum / count).item() == pytest.approx(loss)
    _close(logps.grad, grad)


def test_clip_activates_only_past_the_bound_that_the_advantage_pushes_towards():
    # eps_low 0.2, eps_high 0.28 (DAPO's clip-higher): bounds 0.8 and 1.28
    ratios = torch.tensor([[1.5, 1.1, 0.5], [0.5, 0.9, 1.5]])
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.5, -0.5, -2.5]])
    logps = (old + ratios.log()).requires_grad_()
    out = clipped_policy_loss(logps, old, torch.tensor([1.0, -1.0]), torch.ones(2, 3, dtype=torch.bool),
                              eps_low=0.2, eps_high=0.28)
    # A = +1: -min(1.5, 1.28) = -1.28 (clipped), -1.1, -min(0.5, 0.8) = -0.5 (not clipped: the pessimistic min)
    # A = -1: -min(-0.5, -0.8) = 0.8 (clipped), 0.9, -min(-1.5, -1.28) = 1.5 (not clipped)
    _close(out.token_losses.detach(), [[-1.28, -1.1, -0.5], [0.8, 0.9, 1.5]])
    assert out.clipped.tolist() == [[T, F, F], [T, F, F]]
    assert out.high_clipped.tolist() == [[T, F, F], [F, F, F]]
    assert out.low_clipped.tolist() == [[F, F, F], [T, F, F]]
    _close(out.ratio, ratios.tolist())
    out.token_losses.sum().backward()
    # ∂l/∂log π = -A·ρ where unclipped, 0 where clipped
    _close(logps.grad, [[0.0, -1.1, -0.5], [0.0, 0.9, 1.5]])


def test_padding_with_infinite_logps_gives_zero_loss_and_finite_gradients():
    logps = torch.tensor([[-1.0, -math.inf], [-0.5, math.nan]], requires_grad=True)
    mask = torch.tensor([[T, F], [T, F]])
    out = clipped_policy_loss(logps, logps.detach(), torch.tensor([1.0, 1.0]), mask)
    assert out.token_losses.tolist() == [[-1.0, 0.0], [-1.0, 0.0]]
    loss_sum, count = aggregate(out.token_losses, mask, "token_mean")
    loss_sum.backward()
    assert logps.grad.tolist() == [[-1.0, 0.0], [-1.0, 0.0]]


# -- aggregation ----------------------------------------------------------------------------------------------
# Losses [[1, 2, 3], [4, 5, 6]] with 2 and 1 tokens (3, 5, 6 are padding), then a fully masked third row.
LOSSES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
RAGGED = torch.tensor([[T, T, F], [T, F, F], [F, F, F]])


@pytest.mark.parametrize("mode, two_rows, three_rows", [
    ("sequence_mean", (5.5, 2), (5.5, 3)),        # (1 + 2)/2 + 4/1; the empty row adds 0 and counts as a sequence
    ("token_mean", (7.0, 3), (7.0, 3)),           # 1 + 2 + 4 over 3 tokens
    ("constant_length", (7.0, 8), (7.0, 12)),     # over N·L = 2·4, 3·4
])
def test_aggregate_hand_computed(mode, two_rows, three_rows):
    for rows, expected in ((2, two_rows), (3, three_rows)):
        loss_sum, count = aggregate(LOSSES[:rows], RAGGED[:rows], mode, max_completion_length=4)
        assert (loss_sum.item(), count.item()) == expected
        assert torch.isfinite(loss_sum)


def test_aggregate_refuses_bad_modes():
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(LOSSES, RAGGED, "constant_length")
    with pytest.raises(ValueError, match="sequence_mean, token_mean, constant_length"):
        aggregate(LOSSES, RAGGED, "bnpo")


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_micro_batches_sum_to_the_whole_batch(mode):
    # the accumulation invariant: Σ sums / Σ counts over micro-batches = the one-batch value, for an unequal split
    losses = torch.tensor([[0.5, -1.0, 2.0, 0.0], [3.0, 1.0, -2.0, 4.0], [-1.5, 0.5, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[T, T, T, F], [T, F, F, F], [T, T, T, T], [T, T, F, F]])
    whole_sum, whole_count = aggregate(losses, mask, mode, max_completion_length=4)
    parts = [aggregate(losses[s], mask[s], mode, max_completion_length=4) for s in (slice(0, 1), slice(1, 4))]
    split = sum(s for s, _ in parts) / sum(c for _, c in parts)
    assert split.item() == pytest.approx((whole_sum / whole_count).item(), abs=1e-6)
    # the mean of the micro-batches' own means (TRL's "bnpo" under accumulation) is not the same number
    if mode == "token_mean":
        assert sum(s / c for s, c in parts).item() / 2 != pytest.approx((whole_sum / whole_count).item(), abs=1e-3)
