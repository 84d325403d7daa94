"""DPO / cDPO / IPO, KTO, SFT and ReMax losses against hand-computed values and their invariants."""

import math

import pytest
import torch

from prefloop.core.logprobs import full_kl
from prefloop.core.losses import (
    dpo_loss,
    kto_loss,
    remax_advantage,
    remax_loss,
    remax_returns,
    sft_loss,
)


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float32, requires_grad=grad)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- DPO


def test_dpo_is_log2_when_policy_equals_reference():
    logps = t(-3.0, -10.0, -0.5)
    other = t(-4.0, -2.0, -7.5)
    for smoothing in (0.0, 0.1, 0.5):
        out = dpo_loss(logps, other, logps, other, beta=0.1, label_smoothing=smoothing, ipo=False)
        assert out.losses.tolist() == pytest.approx([math.log(2)] * 3, abs=1e-6)
        assert out.chosen_rewards.abs().max().item() == 0.0


def test_dpo_hand_computed():
    # h = (-1 - -3) - (-2 - -2) = 2; beta * h = 1
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.0, ipo=False)
    assert out.losses.item() == pytest.approx(-log_sigmoid(1.0), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.5 * (-1.0 - -2.0))
    assert out.rejected_rewards.item() == pytest.approx(0.5 * (-3.0 - -2.0))


def test_cdpo_hand_computed():
    out = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.1, ipo=False)
    expected = -0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)


def test_ipo_hand_computed():
    # h = 2, 1 / (2 beta) = 1 -> (2 - 1)^2 = 1; beta = 0.25: (2 - 2)^2 = 0
    assert dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.5, label_smoothing=0.0, ipo=True).losses.item() == pytest.approx(1.0)
    assert dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.25, label_smoothing=0.0, ipo=True).losses.item() == pytest.approx(0.0)


def test_dpo_gradient_raises_chosen_lowers_rejected_and_rewards_are_detached():
    chosen, rejected = t(-1.0, -2.0, grad=True), t(-1.5, -0.5, grad=True)
    out = dpo_loss(chosen, rejected, t(-1.2, -2.0), t(-1.5, -1.0), beta=0.1, label_smoothing=0.0, ipo=False)
    out.losses.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_rejects_bad_arguments():
    x = t(-1.0)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.0, label_smoothing=0.0, ipo=False)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, label_smoothing=0.7, ipo=False)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, label_smoothing=0.1, ipo=True)


# ---------------------------------------------------------------- KTO

KTO_ARGS = dict(
    policy_logps=t(-1.0, -2.0),
    ref_logps=t(-1.5, -1.0),
    desirable=torch.tensor([True, False]),
    policy_kl_logps=t(-3.0, -2.0),
    ref_kl_logps=t(-3.4, -2.2),
    beta=0.1,
)


EVEN = {"desirable_weight": 1.0, "undesirable_weight": 1.0}  # KTO's weights, passed: the loss has no defaults


def test_kto_hand_computed():
    out = kto_loss(**KTO_ARGS, desirable_weight=1.0, undesirable_weight=1.5)
    z = (0.4 + 0.2) / 2  # mean of the mismatched log-ratios
    assert out.z.item() == pytest.approx(z, abs=1e-6)
    expected = [1.0 * (1 - sigmoid(0.1 * (0.5 - z))), 1.5 * (1 - sigmoid(0.1 * (z - -1.0)))]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.rewards.tolist() == pytest.approx([0.05, -0.1], abs=1e-6)


def test_kto_weights_scale_each_term():
    base = kto_loss(**KTO_ARGS, **EVEN).losses
    weighted = kto_loss(**KTO_ARGS, desirable_weight=2.0, undesirable_weight=3.0).losses
    assert weighted.tolist() == pytest.approx([2.0 * base[0].item(), 3.0 * base[1].item()], abs=1e-6)


def test_kto_z_is_clamped_at_zero():
    args = dict(KTO_ARGS, policy_kl_logps=t(-5.0, -5.0), ref_kl_logps=t(-3.0, -4.0))
    out = kto_loss(**args, **EVEN)
    assert out.z.item() == 0.0
    assert out.losses[0].item() == pytest.approx(1 - sigmoid(0.1 * 0.5), abs=1e-6)


def test_kto_equal_models_give_half_weight():
    x = t(-2.0, -3.0)
    out = kto_loss(x, x, torch.tensor([True, False]), x, x, beta=0.5, desirable_weight=1.0, undesirable_weight=4.0)
    assert out.losses.tolist() == pytest.approx([0.5, 2.0])


def test_no_gradient_reaches_z():
    policy = t(-1.0, -2.0, grad=True)
    policy_kl = t(-3.0, -2.0, grad=True)
    out = kto_loss(policy, KTO_ARGS["ref_logps"], KTO_ARGS["desirable"], policy_kl, KTO_ARGS["ref_kl_logps"],
                   beta=0.1, **EVEN)
    assert not out.z.requires_grad
    out.losses.sum().backward()
    assert policy_kl.grad is None
    # d/dlogp of 1 - sigmoid(beta (logp - ref - z)) = -beta s (1 - s), z held fixed
    s = sigmoid(0.1 * (0.5 - 0.3))
    assert policy.grad[0].item() == pytest.approx(-0.1 * s * (1 - s), abs=1e-6)


def test_kto_reduce_fn_averages_before_the_clamp():
    other_worker_z = torch.tensor(1.5)
    seen = []

    def all_reduce_mean(z):  # stands in for the trainer's all-reduce across 2 workers
        seen.append(z.item())
        return (z + other_worker_z) / 2

    args = dict(KTO_ARGS, policy_kl_logps=t(-1.5), ref_kl_logps=t(-1.0))  # local z = -0.5
    out = kto_loss(**args, **EVEN, reduce_fn=all_reduce_mean)
    assert seen == [pytest.approx(-0.5)]
    assert out.z.item() == pytest.approx(0.5)  # clamp(mean(-0.5, 1.5)), not mean(clamp(-0.5), 1.5)


def test_kto_needs_mismatched_pairs():
    with pytest.raises(ValueError):
        kto_loss(**dict(KTO_ARGS, policy_kl_logps=t(), ref_kl_logps=t()), **EVEN)


# ---------------------------------------------------------------- SFT


def test_sft_hand_computed():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                           [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]]])
    labels = torch.tensor([[1, 2, 0], [0, 0, 1]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    z0 = math.log(1 + math.e + math.e**2)  # logsumexp(0, 1, 2)
    z1 = math.log(math.e + 2)
    z3 = math.log(2 + math.exp(3))
    nll = [-(2.0 - z0) - (1.0 - z1), -(3.0 - z3)]
    out = sft_loss(logits, labels, mask)
    assert out.nll_sum.tolist() == pytest.approx(nll, abs=1e-6)
    assert out.n_tokens.tolist() == [2, 1]
    assert out.token_mean().item() == pytest.approx(sum(nll) / 3, abs=1e-6)
    assert out.example_mean().item() == pytest.approx((nll[0] / 2 + nll[1]) / 2, abs=1e-6)


# ---------------------------------------------------------------- ReMax


def test_remax_advantage_is_clipped_difference():
    adv = remax_advantage(t(2.0, 0.5, -3.0), t(0.5, 0.2, 0.0), reward_clip=1.0)
    assert adv.tolist() == pytest.approx([1.0, 0.3, -1.0])
    with pytest.raises(ValueError):
        remax_advantage(t(1.0), t(0.0), reward_clip=0.0)


LOGP = [[-1.0, -2.0, -0.5, -0.7]]
REF = [[-1.5, -1.0, -0.5, -9.0]]
MASK = [[1, 1, 1, 0]]


def test_remax_sampled_hand_computed_and_gradient():
    policy = torch.tensor(LOGP, requires_grad=True)
    out = remax_loss(policy, t(1.0), torch.tensor(MASK), kl_ctl=0.1, kl_penalty="sampled", kl_to_go=False,
                     ref_logps=torch.tensor(REF))
    # k = [0.5, -1, 0]; G = 1 - 0.1 k = [0.95, 1.1, 1.0]
    assert out.returns[0].tolist() == pytest.approx([0.95, 1.1, 1.0, 0.0])
    assert out.loss_sum.item() == pytest.approx(0.95 * 1.0 + 1.1 * 2.0 + 1.0 * 0.5)
    assert out.token_mean().item() == pytest.approx((0.95 + 2.2 + 0.5) / 3)
    assert out.kl.item() == pytest.approx(-0.5)
    out.loss_sum.sum().backward()
    # REINFORCE: d loss / d logp_t = -G_t exactly; the KL inside G carries no gradient
    assert policy.grad[0].tolist() == pytest.approx([-0.95, -1.1, -1.0, 0.0])


def test_remax_kl_to_go():
    kl = torch.tensor([[0.5, -1.0, 0.2, 7.0]])
    returns = remax_returns(t(1.0), kl, torch.tensor(MASK), kl_ctl=0.1, kl_to_go=True)
    # KL to go: [0.5 - 1 + 0.2, -1 + 0.2, 0.2] = [-0.3, -0.8, 0.2]
    assert returns[0].tolist() == pytest.approx([1.03, 1.08, 0.98, 0.0])


def test_remax_full_step_uses_the_given_full_kl():
    kl = torch.tensor([[0.2, 0.4, 0.0, 5.0]])
    out = remax_loss(torch.tensor(LOGP), t(-0.5), torch.tensor(MASK), kl_ctl=0.5, kl_penalty="full_step",
                     kl_to_go=False, full_kl=kl)
    g = [-0.5 - 0.1, -0.5 - 0.2, -0.5]
    assert out.returns[0, :3].tolist() == pytest.approx(g)
    assert out.loss_sum.item() == pytest.approx(-(g[0] * -1.0 + g[1] * -2.0 + g[2] * -0.5))


def test_remax_full_step_end_to_end_with_full_kl():
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(2, 5, 6, requires_grad=True), torch.randn(2, 5, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    kl = full_kl(logits, ref_logits, mask)
    policy = torch.randn(2, 4, requires_grad=True)
    out = remax_loss(policy, t(0.3, -0.2), mask[:, 1:], kl_ctl=0.1, kl_penalty="full_step", kl_to_go=False,
                     full_kl=kl)
    out.token_mean().backward()
    assert logits.grad is None  # the KL is a detached reward term, not a loss term
    assert torch.equal(policy.grad == 0, mask[:, 1:] == 0)


def test_remax_masked_steps_cannot_produce_nan():
    policy = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    out = remax_loss(policy, t(1.0), torch.tensor([[1, 0]]), kl_ctl=0.1, kl_penalty="sampled",
                     kl_to_go=False, ref_logps=torch.tensor([[-1.0, -2.0]]))
    assert torch.isfinite(out.loss_sum).all() and torch.isfinite(out.returns).all()
    out.loss_sum.sum().backward()
    assert torch.isfinite(policy.grad).all()


def test_remax_argument_errors():
    x, m = torch.zeros(1, 3), torch.ones(1, 3)
    with pytest.raises(ValueError):
        remax_loss(x, t(1.0), m, kl_ctl=0.1, kl_penalty="sampled", kl_to_go=False)
    with pytest.raises(ValueError):
        remax_loss(x, t(1.0), m, kl_ctl=0.1, kl_penalty="full_step", kl_to_go=False)
    with pytest.raises(ValueError):
        remax_loss(x, t(1.0), m, kl_ctl=0.1, kl_penalty="k3", kl_to_go=False, ref_logps=x)


def test_no_loss_restates_a_training_setting_default():
    import inspect

    from prefloop.core.losses import remax_returns
    from prefloop.core.train_config import RemaxSettings, TrainConfig

    settings = set(TrainConfig.model_fields) | set(RemaxSettings.model_fields)
    restated = [f"{fn.__name__}({name}={p.default!r})" for fn in (dpo_loss, kto_loss, remax_loss, remax_returns)
                for name, p in inspect.signature(fn).parameters.items()
                if name in settings and p.default is not inspect.Parameter.empty]
    assert restated == []  # core/train_config.py owns every setting's default; the losses take them explicitly
