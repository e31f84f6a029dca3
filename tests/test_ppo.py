"""PPO math (prewrite.algorithms.ppo) against values worked by hand."""

import math

import pytest
import torch

from prewrite.algorithms import ppo


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_penalty_on_every_token():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-1.0, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, 0.0, 0.0]])
    rewards, kl = ppo.token_rewards(torch.tensor([1.0, 2.0]), logps, ref, mask, kl_coef=0.1)
    # kl = logp - ref on valid tokens: [[0.5, -1, 0], [-0.5, 0, 0]]
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [-0.5, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1 + 1.0, 0.0], [0.05 + 2.0, 0.0, 0.0]]))


def test_gae_by_hand():
    # T=2, gamma 0.9, lambda 0.5, reward 1 at the end, values [0.5, 0.8]:
    # delta1 = 1 - 0.8 = 0.2 -> A1 = 0.2; delta0 = 0.9 * 0.8 - 0.5 = 0.22 -> A0 = 0.22 + 0.45 * 0.2 = 0.31
    adv, ret = ppo.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.8]]), torch.ones(1, 2), gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.31, 0.2]]))
    torch.testing.assert_close(ret, torch.tensor([[0.81, 1.0]]))


def test_gae_ends_the_episode_at_the_last_valid_token():
    # one valid token: A0 = r0 - V0, whatever the value head says about the padding position
    adv, ret = ppo.gae(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.3, 7.0]]), torch.tensor([[1.0, 0.0]]), 1.0, 0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.7, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.4, 0.1, 0.2]])
    adv, _ = ppo.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    to_go = torch.tensor([[0.9, 0.8, 1.0]])
    assert torch.allclose(adv, to_go - values)


def test_policy_loss_is_the_pessimistic_clip():
    # ratio 1.5 everywhere, cliprange 0.2: A=+1 -> max(-1.5, -1.2) = -1.2; A=-1 -> max(1.5, 1.2) = 1.5
    logps = torch.full((2, 1), math.log(1.5))
    zeros, mask = torch.zeros(2, 1), torch.ones(2, 1)
    adv = torch.tensor([[1.0], [-1.0]])
    policy_loss, _, stats = ppo.ppo_losses(logps, zeros, adv, zeros, zeros, zeros, mask, cliprange=0.2)
    assert policy_loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_value_loss_is_the_pessimistic_clip():
    # old value 0, new 1, return 2, clip 0.2: unclipped (1 - 2)^2 = 1, clipped (0.2 - 2)^2 = 3.24 -> 0.5 * 3.24
    one = torch.ones(1, 1)
    _, value_loss, stats = ppo.ppo_losses(0 * one, 0 * one, 0 * one, one, 0 * one, 2 * one, one, cliprange_value=0.2)
    assert value_loss.item() == pytest.approx(1.62)
    assert stats["vf_clipfrac"].item() == 1.0


def test_losses_ignore_masked_tokens():
    logps = torch.tensor([[0.1, 5.0]])
    mask = torch.tensor([[1.0, 0.0]])
    adv, values, ret = torch.tensor([[1.0, 100.0]]), torch.tensor([[0.5, -9.0]]), torch.tensor([[1.0, 9.0]])
    a = ppo.ppo_losses(logps, torch.zeros(1, 2), adv, values, values, ret, mask)
    b = ppo.ppo_losses(
        logps[:, :1], torch.zeros(1, 1), adv[:, :1], values[:, :1], values[:, :1], ret[:, :1], mask[:, :1]
    )
    assert a[0].item() == pytest.approx(b[0].item())
    assert a[1].item() == pytest.approx(b[1].item())


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo.masked_whiten(x, mask)
    valid = w[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-4)


def test_adaptive_kl_controller():
    # KL twice the target: error clipped to +0.2, gain n_steps / horizon
    assert ppo.adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=100, n_steps=10) == pytest.approx(0.1 * 1.02)
    # KL 10% under target: coefficient shrinks by 10% of the gain
    assert ppo.adaptive_kl_coef(0.1, kl=5.4, target=6.0, horizon=10, n_steps=10) == pytest.approx(0.1 * 0.9)
