"""Preference losses (losses/preference.py) against hand-computed numbers, and their invariants."""

import math

import pytest
import torch

from lit_align.losses import (PREFERENCE_LOSSES, chosen_nll, dpo_sigmoid_loss, hinge_loss, ipo_loss, nll,
                              preference_loss, robust_dpo_loss)

# One pair: policy log-probs (chosen, rejected) = (-1, -3), reference (-2, -2.5)
#   h = (-1 - -3) - (-2 - -2.5) = 2 - 0.5 = 1.5;  β = 0.5 -> βh = 0.75
#   rewards: chosen 0.5 * (-1 - -2) = 0.5, rejected 0.5 * (-3 - -2.5) = -0.25
BETA = 0.5
SOFTPLUS_NEG = 0.38687100611489994      # log(1 + e^-0.75) = -log σ(0.75)
SOFTPLUS_POS = 1.1368710061148999       # log(1 + e^0.75)  = -log σ(-0.75)


def _pair(requires_grad=False):
    pc = torch.tensor([-1.0], requires_grad=requires_grad)
    pr = torch.tensor([-3.0], requires_grad=requires_grad)
    return pc, pr, torch.tensor([-2.0]), torch.tensor([-2.5])


def test_constants_are_what_they_say():
    assert SOFTPLUS_NEG == pytest.approx(math.log1p(math.exp(-0.75)), abs=1e-15)
    assert SOFTPLUS_POS == pytest.approx(math.log1p(math.exp(0.75)), abs=1e-15)
    assert SOFTPLUS_NORM == pytest.approx(math.log1p(math.exp(-0.3125)), abs=1e-15)


@pytest.mark.parametrize("fn, kwargs, expected", [
    (dpo_sigmoid_loss, {}, SOFTPLUS_NEG),
    (dpo_sigmoid_loss, {"label_smoothing": 0.1}, 0.9 * SOFTPLUS_NEG + 0.1 * SOFTPLUS_POS),   # 0.46187
    (robust_dpo_loss, {"label_smoothing": 0.1}, (0.9 * SOFTPLUS_NEG - 0.1 * SOFTPLUS_POS) / 0.8),  # 0.29312
    (robust_dpo_loss, {}, SOFTPLUS_NEG),
    (ipo_loss, {}, 0.25),       # (1.5 - 1 / (2 * 0.5))² = 0.5²
    (hinge_loss, {}, 0.25),     # max(0, 1 - 0.75)
])
def test_hand_computed(fn, kwargs, expected):
    out = fn(*_pair(), beta=BETA, **kwargs)
    assert out.losses.shape == (1,)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.item() == pytest.approx(-0.25)


# The same pair with 2 chosen and 4 rejected tokens, length-normalised: policy (-0.5, -0.75), reference
# (-1, -0.625): h = 0.25 + 0.375 = 0.625, βh = 0.3125. The rewards stay those of the sequences (0.5, -0.25),
# not of the per-token means (0.25, -0.0625).
SOFTPLUS_NORM = 0.5490548622706681      # log(1 + e^-0.3125)


@pytest.mark.parametrize("name, normalize, expected", [
    ("sigmoid", False, SOFTPLUS_NEG),
    ("sigmoid", True, SOFTPLUS_NORM),
    ("ipo", False, 0.25),                # (1.5 - 1)²
    ("ipo", True, 0.140625),             # (0.625 - 1)²
    ("hinge", True, 0.6875),             # max(0, 1 - 0.3125)
])
def test_preference_loss_normalises_the_loss_not_the_rewards(name, normalize, expected):
    pc, pr, rc, rr = _pair()
    out = preference_loss(name, torch.stack([pc, pr], 1), torch.stack([rc, rr], 1), torch.tensor([[2, 4]]),
                          beta=BETA, length_normalize=normalize)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (pytest.approx(0.5), pytest.approx(-0.25))


def test_rewards_are_detached_and_gradient_is_dpo():
    pc, pr, rc, rr = _pair(requires_grad=True)
    out = dpo_sigmoid_loss(pc, pr, rc, rr, beta=BETA)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    out.losses.sum().backward()
    # d/dπ_w [-log σ(β h)] = -β σ(-β h);  d/dπ_l = +β σ(-β h)
    g = BETA * (1 / (1 + math.exp(0.75)))
    assert pc.grad.item() == pytest.approx(-g, abs=1e-6)
    assert pr.grad.item() == pytest.approx(g, abs=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_policy_equal_reference_gives_log2(smoothing):
    lp = torch.tensor([-5.0, -12.25, -0.5])
    lr = torch.tensor([-7.0, -3.5, -40.0])
    for fn in (dpo_sigmoid_loss, robust_dpo_loss):
        out = fn(lp, lr, lp.clone(), lr.clone(), beta=0.1, label_smoothing=smoothing)
        assert torch.equal(out.losses, torch.full((3,), math.log(2)))
        assert torch.equal(out.chosen_rewards, torch.zeros(3))
    assert torch.allclose(ipo_loss(lp, lr, lp, lr, beta=0.1).losses, torch.full((3,), 25.0))  # (1/(2β))²
    assert torch.equal(hinge_loss(lp, lr, lp, lr, beta=0.1).losses, torch.ones(3))


def test_batched_rows_are_independent():
    pc, pr, rc, rr = (torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -4.0]),
                      torch.tensor([-2.0, -4.0]), torch.tensor([-2.5, -4.0]))
    for name, fn in PREFERENCE_LOSSES.items():
        both = fn(pc, pr, rc, rr, beta=BETA).losses
        first = fn(pc[:1], pr[:1], rc[:1], rr[:1], beta=BETA).losses
        assert both.shape == (2,), name
        assert both[0] == first[0], name
    assert dpo_sigmoid_loss(pc, pr, rc, rr, beta=BETA).losses[1].item() == pytest.approx(math.log(2))


def test_robust_refuses_half():
    with pytest.raises(ValueError):
        robust_dpo_loss(*_pair(), beta=BETA, label_smoothing=0.5)


def test_chosen_nll_is_per_token_mean():
    out = chosen_nll(torch.tensor([-6.0, -1.0]), torch.tensor([3, 4]))
    assert out.tolist() == [2.0, 0.25]


def test_nll_unchanged():
    logps = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    s, n = nll(logps, mask)
    assert s.tolist() == [3.0, 0.5] and n.tolist() == [2, 1]
