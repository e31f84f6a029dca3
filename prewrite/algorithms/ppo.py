"""PPO as PRewrite trains it: a KL penalty to the reference in the per-token reward, GAE, and the
clipped policy and value losses. Plain torch, no state: the PPO object (prewrite.algorithms.updates)
keeps the KL coefficient.

Shapes: [B, T] over completion tokens (position t = the t-th generated token), scores [B].
Names follow TRL's PPOConfig (`kl_coef`, `cliprange`, `cliprange_value`, `vf_coef`, `gamma`, `lam`)
and, for the adaptive KL controller of Ziegler et al. (2019), its older `target` and `horizon`.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise x to unit variance over the masked entries (and zero mean unless shift_mean=False)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    var = var * n / (n - 1).clamp(min=1.0)  # unbiased, as TRL's masked_var
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def token_rewards(
    scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward: -kl_coef * (log pi - log ref) on every token, plus the task score on the last
    token of each completion. Returns (rewards [B, T], per-token KL [B, T])."""
    kl = (logps - ref_logps) * mask  # k1 estimator: its expectation under pi is KL(pi || ref)
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)  # the EOS, or the last token of a truncated completion
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. values[:, t] estimates the return from before token t;
    positions past the end of a completion (mask 0) have value 0, so the episode ends there.
    Returns (advantages, returns = advantages + values)."""
    # Zero rewards and values past the end make every delta there 0, so the recursion needs no mask.
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float = 0.2,
    cliprange_value: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss and clipped value loss, token means over the mask.
    Returns (policy_loss, value_loss, detached statistics)."""
    ratio = torch.exp(logps - old_logps)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    policy_loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)

    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    value_loss = 0.5 * masked_mean(vf_losses, mask)

    stats = {
        "clipfrac": masked_mean((pg_losses_clipped > pg_losses).float(), mask).detach(),
        "vf_clipfrac": masked_mean(((values_clipped - returns) ** 2 > (values - returns) ** 2).float(), mask).detach(),
        "approx_kl": (0.5 * masked_mean((logps - old_logps) ** 2, mask)).detach(),
        "ratio": masked_mean(ratio, mask).detach(),
    }
    return policy_loss, value_loss, stats


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al.'s proportional controller: move kl_coef so the observed KL approaches `target`
    (error clipped to +-20%, gain n_steps / horizon)."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
