"""PPO maths against plain loops and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from policy_trainer.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    compute_gae,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    penalized_rewards,
    policy_loss,
    value_loss,
)

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)


def gae_loop(rewards, values, n, gamma, lam):
    """One sequence of n real tokens, the textbook recursion."""
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        nv = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * nv - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values[:n], strict=True)]


def test_gae_matches_the_loop_per_sequence_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    rewards_padded = rewards.clone()
    rewards_padded[MASK == 0] = 99.0  # garbage in padding must not leak in
    values_padded = values.clone()
    values_padded[MASK == 0] = -99.0
    adv, ret = compute_gae(rewards_padded * MASK, values_padded, MASK, gamma=0.99, lam=0.95)
    for b in range(3):
        n = int(MASK[b].sum())
        want_adv, want_ret = gae_loop(rewards[b].tolist(), values[b].tolist(), n, 0.99, 0.95)
        torch.testing.assert_close(adv[b, :n], torch.tensor(want_adv), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ret[b, :n], torch.tensor(want_ret), rtol=1e-5, atol=1e-6)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.7]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))


def test_penalized_rewards_put_the_score_on_the_last_real_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, -5.0, -5.0], [-1.0, -3.0, -3.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -1.0], [-1.0, -2.5, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([1.0, 2.0, 3.0])
    rewards, kl = penalized_rewards(scores, logp, ref, MASK, kl_coef=0.1)
    want_kl = torch.tensor([[0.5, 0.0, -0.5, 0.0], [-1.0, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(kl, want_kl)
    want = -0.1 * want_kl
    want[0, 3] += 1.0
    want[1, 1] += 2.0
    want[2, 0] += 3.0
    torch.testing.assert_close(rewards, want)


def test_masked_statistics_and_whitening():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, 100.0], [7.0, 100.0, 100.0, 100.0]])
    real = torch.tensor([1.0, 2, 3, 4, 5, 6, 7])
    assert float(masked_mean(x, MASK)) == pytest.approx(float(real.mean()))
    assert float(masked_var(x, MASK)) == pytest.approx(float(real.var(unbiased=True)))
    torch.testing.assert_close(masked_mean(x, MASK, dim=1), torch.tensor([2.5, 5.5, 7.0]))
    w = masked_whiten(x, MASK)
    assert float(masked_mean(w, MASK)) == pytest.approx(0.0, abs=1e-6)
    assert float(masked_var(w, MASK)) == pytest.approx(1.0, abs=1e-4)
    assert (w[MASK == 0] == 0).all()


def test_logprobs_and_entropy_match_a_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g)
    labels = torch.randint(0, 5, (2, 3), generator=g)
    lp = logprobs_from_logits(logits, labels)
    ent = entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            p = torch.softmax(logits[b, t], -1)
            assert float(lp[b, t]) == pytest.approx(math.log(float(p[labels[b, t]])), abs=1e-5)
            assert float(ent[b, t]) == pytest.approx(-sum(float(q) * math.log(float(q)) for q in p), abs=1e-5)


def test_policy_loss_clips_and_reports_hand_computed_values():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, clipfrac, approx_kl = policy_loss(new, old, adv, torch.ones(1, 3), clip_range=0.2)
    # token 1: min(1.5, 1.2) * 1 -> 1.2 (clipped); token 2: min(0.5, 0.8) -> 0.5; token 3: -1 * max(1.1, 1.1) -> -1.1
    assert float(loss) == pytest.approx(-(1.2 + 0.5 - 1.1) / 3)
    assert float(clipfrac) == pytest.approx(1 / 3)
    want_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert float(approx_kl) == pytest.approx(want_kl, rel=1e-5)


def test_value_loss_takes_the_larger_of_clipped_and_unclipped():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[1.0, 1.0]])
    loss, frac = value_loss(new, old, ret, torch.ones(1, 2), clip_range=0.2)
    # token 1: unclipped 0, clipped (0.2 - 1)^2 = 0.64; token 2: both (0.1 - 1)^2 = 0.81
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert float(frac) == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_towards_the_target_and_round_trips():
    c = AdaptiveKLController(kl_coef=0.05, target=6.0, horizon=10000)
    c.update(current_kl=12.0, n_steps=1000)  # error clipped to +0.2
    assert c.kl_coef == pytest.approx(0.05 * (1 + 0.2 * 0.1))
    c.update(current_kl=3.0, n_steps=1000)  # error -0.5 clipped to -0.2
    assert c.kl_coef == pytest.approx(0.05 * 1.02 * 0.98)
    d = AdaptiveKLController()
    d.load_state_dict(c.state_dict())
    assert d == c
    f = FixedKLController(kl_coef=0.3)
    assert f.update(100.0, 10) == 0.3


def test_running_moments_equal_the_statistics_of_everything_seen():
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 17, 1, 40)]
    rm = RunningMoments()
    for b in batches:
        rm.update(b)
    allx = torch.cat(batches).double()
    assert rm.mean == pytest.approx(float(allx.mean()), rel=1e-6)
    assert rm.std == pytest.approx(float(allx.std(unbiased=False)), rel=1e-6)
    other = RunningMoments()
    other.load_state_dict(rm.state_dict())
    assert other == rm
