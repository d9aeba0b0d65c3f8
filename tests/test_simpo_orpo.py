"""SimPO and ORPO (losses/preference.py, objectives/simpo.py, objectives/orpo.py): the losses against hand-computed numbers
and their invariants; the objectives on real batches, without any reference model; packed equals padded; the
configs run through the CLI."""

import math

import pytest
import torch
from conftest import REPO, perturb, run_cli

from lit_align.data import AlignDataModule
from lit_align.errors import LitAlignError
from lit_align.modeling.logprobs import sequence_logps
from lit_align.losses import MAX_MEAN_LOGP, log_odds, orpo_loss, simpo_loss
from lit_align.modeling.models import ModelSpec
from lit_align.objectives import ORPO, PairObjective, SimPO

PAIR_METRICS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy",
                "logps/chosen", "logps/rejected", "logps/margins", "logps/accuracy"}

# -- SimPO, by hand --------------------------------------------------------------------------------------
# One pair: log π(y_w) = -3 over 2 tokens, log π(y_l) = -8 over 4 tokens; β = 2, γ = 0.5
#   rewards r(y_w) = 2 · -3/2 = -3, r(y_l) = 2 · -8/4 = -4; z = -3 - -4 - 0.5 = 0.5
#   loss = -log σ(0.5) = log(1 + e^-0.5) = 0.47407698418010669
#   d loss / d log π(y_w) = -σ(-0.5) · β/|y_w| = -0.37754066879814546;  d / d log π(y_l) = +σ(-0.5) · 2/4
SIMPO_LOSS = 0.4740769841801067
SIGMOID_NEG_HALF = 0.37754066879814546          # σ(-0.5)


def test_simpo_constants_are_what_they_say():
    assert SIMPO_LOSS == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-15)
    assert SIGMOID_NEG_HALF == pytest.approx(1 / (1 + math.exp(0.5)), abs=1e-15)


def test_simpo_by_hand():
    pc, pr = torch.tensor([-3.0], requires_grad=True), torch.tensor([-8.0], requires_grad=True)
    out = simpo_loss(pc, pr, torch.tensor([2]), torch.tensor([4]), beta=2.0, gamma=0.5)
    assert out.losses.item() == pytest.approx(SIMPO_LOSS, abs=1e-6)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == (-3.0, -4.0)
    assert not out.chosen_rewards.requires_grad
    out.losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-SIGMOID_NEG_HALF, abs=1e-6)
    assert pr.grad.item() == pytest.approx(SIGMOID_NEG_HALF / 2, abs=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.6])
def test_simpo_at_equal_per_token_logps_is_softplus_gamma(gamma):
    # chosen and rejected with the same per-token mean log-prob, at different lengths (hence sums): margin 0
    pc, nc, nr = torch.tensor([-2.5, -5.0, -0.25]), torch.tensor([2, 4, 1]), torch.tensor([4, 1, 3])
    pr = pc / nc * nr                               # (-5.0, -1.25, -0.75)
    out = simpo_loss(pc, pr, nc, nr, beta=2.0, gamma=gamma)
    assert torch.allclose(out.losses, torch.full((3,), math.log1p(math.exp(gamma))), atol=1e-6)
    assert torch.allclose(out.chosen_rewards, out.rejected_rewards)


# -- ORPO, by hand ---------------------------------------------------------------------------------------
# One pair: y_w 3 tokens with p̄ = 0.5 (log π = 3 ln 0.5), y_l 2 tokens with p̄ = 0.2 (log π = 2 ln 0.2); λ = 0.1
#   odds(y_w) = 1 (log 0), odds(y_l) = 0.25 (log -1.386294); log odds ratio = ln 4 = 1.3862943611198906
#   odds-ratio term = -log σ(ln 4) = -log 0.8 = ln 1.25 = 0.22314355131420976;  NLL = -ln 0.5 = 0.69314718
#   loss = 0.6931471805599453 + 0.1 · 0.22314355131420976 = 0.7154615356913663
#   rewards: λ · ln 0.5 = -0.06931472, λ · ln 0.2 = -0.16094379
ORPO_LOSS = 0.7154615356913663


def test_orpo_constants_are_what_they_say():
    assert ORPO_LOSS == pytest.approx(-math.log(0.5) + 0.1 * -math.log(1 / (1 + 1 / 4)), abs=1e-15)


def test_orpo_by_hand():
    out = orpo_loss(torch.tensor([3 * math.log(0.5)]), torch.tensor([2 * math.log(0.2)]), torch.tensor([3]),
                    torch.tensor([2]), odds_ratio_weight=0.1)
    assert out.losses.item() == pytest.approx(ORPO_LOSS, abs=1e-6)
    assert out.nll.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.log_odds_chosen.item() == pytest.approx(math.log(4), abs=1e-6)
    assert out.log_odds_ratio.item() == pytest.approx(-math.log(1.25), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5), abs=1e-7)
    assert out.rejected_rewards.item() == pytest.approx(0.1 * math.log(0.2), abs=1e-7)


def test_orpo_gradient_matches_float64_autograd_of_the_formula():
    pc = torch.tensor([-2.0, -0.3, -9.0], requires_grad=True)
    pr = torch.tensor([-1.0, -4.0, -9.5], requires_grad=True)
    nc, nr = torch.tensor([4, 1, 3]), torch.tensor([2, 5, 3])
    orpo_loss(pc, pr, nc, nr, 0.5).losses.sum().backward()
    qc, qr = pc.detach().double().requires_grad_(), pr.detach().double().requires_grad_()
    xc, xr = qc / nc, qr / nr
    naive = -xc - 0.5 * torch.log(torch.sigmoid(  # the textbook form: log(p / (1 - p)) with p = exp(x)
        torch.log(xc.exp() / (1 - xc.exp())) - torch.log(xr.exp() / (1 - xr.exp()))))
    naive.sum().backward()
    assert torch.allclose(pc.grad.double(), qc.grad, atol=1e-6) and torch.allclose(pr.grad.double(), qr.grad, atol=1e-6)


def test_orpo_odds_ratio_is_antisymmetric_and_zero_at_equal_answers():
    pc, pr, nc, nr = torch.tensor([-2.0, -0.3]), torch.tensor([-1.0, -4.0]), torch.tensor([4, 1]), torch.tensor([2, 5])
    ab, ba = orpo_loss(pc, pr, nc, nr), orpo_loss(pr, pc, nr, nc)
    assert torch.allclose(ab.log_odds_chosen, -ba.log_odds_chosen)
    # σ(r) + σ(-r) = 1: the two orders' odds-ratio probabilities are complementary
    assert torch.allclose(ab.log_odds_ratio.exp() + ba.log_odds_ratio.exp(), torch.ones(2))
    same = orpo_loss(pc, pc, nc, nc, odds_ratio_weight=1.0)
    assert torch.allclose(same.log_odds_chosen, torch.zeros(2))
    assert torch.allclose(same.losses, -pc / nc + math.log(2))       # NLL + log 2
    assert torch.equal(orpo_loss(pc, pr, nc, nr, odds_ratio_weight=0.0).losses, -pc / nc)   # λ = 0: SFT per pair


def test_log_odds_is_stable_near_certainty_and_far_from_it():
    x = torch.tensor([-1e-9, 0.0, 3e-7, -30.0, -0.5], dtype=torch.float32, requires_grad=True)
    out = log_odds(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    capped = MAX_MEAN_LOGP - math.log(-math.expm1(MAX_MEAN_LOGP))    # ≈ 13.8: odds of 1e6
    assert out[:3].tolist() == pytest.approx([capped] * 3, rel=1e-6)
    assert out[3].item() == pytest.approx(-30.0, abs=1e-6)           # log(1 - e^-30) ≈ 0
    assert out[4].item() == pytest.approx(-0.5 - math.log(1 - math.exp(-0.5)), abs=1e-6)


# -- the objectives on real batches ---------------------------------------------------------------------


def _batch(obj, n=4):
    dm = AlignDataModule(train={"path": "builtin:pairs", "limit": n}, batch_size=n, max_length=96, shuffle=False)
    dm.connect(obj.tokenizer, obj.layout)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("cls", [SimPO, ORPO])
def test_reference_free_no_reference_model_in_memory(cls):
    obj = cls()
    obj.configure_model()
    assert isinstance(obj, PairObjective) and obj.reference is None  # (the base class owns the optional one)
    assert sorted(dict(obj.named_children())) == ["eval_metrics", "model"]   # the policy, no frozen copy beside it
    assert sum(p.numel() for p in obj.parameters()) == sum(p.numel() for p in obj.model.parameters())
    calls = []
    handle = obj.model.register_forward_hook(lambda m, a, kw, out: calls.append(1), with_kwargs=True)
    try:
        obj.step(_batch(obj))
    finally:
        handle.remove()
    assert calls == [1]                                             # one forward pass: chosen and rejected rows


def test_simpo_step_is_the_pure_loss_on_the_policy_logps():
    obj = SimPO(beta=2.0, gamma=0.5)
    obj.configure_model()
    perturb(obj.model)
    batch = _batch(obj)
    sums = obj.step(batch)
    assert set(sums) == PAIR_METRICS and sums["loss"][1] == 4
    pol = sequence_logps(obj.model, batch)
    mean = pol.logps / pol.tokens                                    # (B, 2) per-token means
    z = 2.0 * (mean[:, 0] - mean[:, 1]) - 0.5
    assert (sums["loss"][0] / 4).item() == pytest.approx(torch.nn.functional.softplus(-z).mean().item(), abs=1e-6)
    assert (sums["rewards/chosen"][0] / 4).item() == pytest.approx(2.0 * mean[:, 0].mean().item(), abs=1e-6)
    assert (sums["logps/chosen"][0] / 4).item() == pytest.approx(pol.logps[:, 0].mean().item(), abs=1e-5)


def test_orpo_step_is_the_pure_loss_on_the_policy_logps():
    obj = ORPO(odds_ratio_weight=0.1)
    obj.configure_model()
    perturb(obj.model)
    batch = _batch(obj)
    sums = obj.step(batch)
    assert set(sums) == PAIR_METRICS | {"nll", "log_odds_ratio", "log_odds_chosen"}
    pol = sequence_logps(obj.model, batch)
    want = orpo_loss(pol.logps[:, 0], pol.logps[:, 1], pol.tokens[:, 0], pol.tokens[:, 1], 0.1)
    assert (sums["loss"][0] / 4).item() == pytest.approx(want.losses.mean().item(), abs=1e-6)
    assert (sums["nll"][0] / 4).item() == pytest.approx((-pol.logps[:, 0] / pol.tokens[:, 0]).mean().item(),
                                                        abs=1e-6)
    assert (sums["log_odds_chosen"][0] / 4).item() == pytest.approx(want.log_odds_chosen.mean().item(), abs=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(LitAlignError, match="beta"):
        SimPO(beta=0)
    with pytest.raises(LitAlignError, match="gamma"):
        SimPO(gamma=-1)
    with pytest.raises(LitAlignError, match="odds_ratio_weight"):
        ORPO(odds_ratio_weight=-0.1)


@pytest.mark.parametrize("cls", [SimPO, ORPO])
def test_packed_equals_padded_losses_gradients_and_metrics(cls):
    results = []
    for packed in (False, True):
        obj = cls(policy=ModelSpec(name="builtin:tiny", attn_implementation="sdpa"), packed=packed)
        obj.configure_model()
        perturb(obj.model)
        batch = _batch(obj, n=6)
        assert ("target_pos" in batch) == packed and obj.layout.name == ("packed_pair" if packed else "pair")
        sums = obj.step(batch)
        loss = sums["loss"][0] / sums["loss"][1]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in obj.model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, {k: (s / c).item() for k, (s, c) in sums.items()}))
    (la, ga, ma), (lb, gb, mb) = results
    assert la == pytest.approx(lb, abs=1e-5)
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-5, rtol=1e-4), n
    for name, value in ma.items():
        assert mb[name] == pytest.approx(value, abs=1e-4), name


# -- the configs, through the CLI -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_config_runs_three_steps(tmp_path, name):
    result = run_cli(["fit", "--config", str(REPO / "configs" / f"{name}.yaml"), "--trainer.max_steps", "3",
                      "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
                      "--data.init_args.batch_size", "4", "--export.enabled", "false",
                      "--trainer.callbacks", "[]"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "logs" / name).glob("version_0/events.out.tfevents.*"))
