"""GRPO: group-relative advantages and the clipped surrogate loss, in plain torch.

Names and semantics follow TRL's GRPOTrainer (`scale_rewards`, `loss_type`, `epsilon`, `epsilon_high`,
`beta`) so the two can be checked against each other on identical inputs.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaNs (NaN where fewer than two values)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    var = torch.where(count > 1, var, torch.full_like(var, float("nan")))
    std = var.sqrt()
    if keepdim:
        return std
    return std.squeeze() if dim is None else std.squeeze(dim)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """Advantage of each completion against the mean of its group of `num_generations`.

    rewards: [B] with B = num_prompts * num_generations, grouped contiguously; NaN marks a completion
    whose reward could not be computed: it is left out of its group's statistics and gets advantage 0.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r}; expected one of {SCALE_REWARDS}")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards == "group":
        advantages = advantages / (nanstd(grouped, dim=1).repeat_interleave(num_generations) + 1e-4)
    elif scale_rewards == "batch":
        advantages = advantages / (nanstd(rewards) + 1e-4)
    # A group with a single scorable member has NaN std: no signal, so advantage 0 like an unscorable one.
    return torch.nan_to_num(advantages, nan=0.0)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    use_bias_correction_kl: bool = True,
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss with an optional k3 KL penalty to a reference policy.

    `use_bias_correction_kl` weights the KL by the (differentiable) importance ratio, as TRL does by
    default, which makes its gradient the unbiased reverse-KL gradient even on-policy.

    logps, old_logps, ref_logps, mask: [B, T] over completion tokens; advantages: [B].
    `num_items_in_batch` is the number of completion tokens of the whole generation batch (dapo
    normalises by it so minibatches add up); it defaults to this batch's token count.
    Returns the loss and detached statistics (kl, clip ratios).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; expected one of {LOSS_TYPES}")
    mask = mask.to(logps.dtype)
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    adv = advantages.unsqueeze(1)

    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)

    stats: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        delta = ref_logps - logps
        per_token_kl = torch.exp(delta) - delta - 1  # k3 estimator of KL(pi || ref), >= 0
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * ratio
        per_token = per_token + beta * per_token_kl
        stats["kl"] = _masked_mean(per_token_kl, mask).detach()

    if loss_type == "grpo":  # mean over each sequence's tokens, then over sequences
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":  # mean over all tokens of the batch
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":  # constant normaliser: no length bias
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    else:  # dapo: mean over all tokens of the generation batch
        n = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=mask.dtype)
        loss = (per_token * mask).sum() / n.clamp(min=1.0)

    low = (ratio < 1 - eps_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    stats["clip_ratio/low"] = _masked_mean(low.to(mask.dtype), mask)
    stats["clip_ratio/high"] = _masked_mean(high.to(mask.dtype), mask)
    stats["clip_ratio/region"] = _masked_mean((low | high).to(mask.dtype), mask)
    return loss, stats


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x * mask).sum() / mask.sum().clamp(min=1.0)).detach()
