"""The algorithms as objects: GRPO and PPO updates of the module's policy, and build_algorithm to pick one
by the config's `name`. The math is in prewrite.algorithms.grpo and .ppo (stateless, tested on its own);
here is what uses it on a rollout: which log-probs, how many epochs and optimizer steps, what state is kept.
"""

from __future__ import annotations

from typing import Any

import torch

from prewrite import distributed
from prewrite.algorithms import ppo
from prewrite.algorithms.base import Algorithm, Learner, micro_batches
from prewrite.algorithms.grpo import group_advantages, grpo_loss
from prewrite.algorithms.logprobs import completion_logprobs_and_values
from prewrite.rollout.base import Rollout


class GRPO(Algorithm):
    """`num_iterations` policy epochs on the group-relative advantages (prewrite.algorithms.grpo)."""

    name = "grpo"

    @property
    def kl_weight(self) -> float:
        return self.cfg["beta"]

    def update(self, module: Learner, rollout: Rollout, rewards: torch.Tensor, mask: torch.Tensor) -> dict:
        # `rewards` are every rank's: a group's statistics see all of it; this rank updates on its own completions
        cfg = self.cfg
        advantages = group_advantages(rewards, cfg["num_generations"], cfg["scale_rewards"])
        advantages = distributed.this_rank(module, advantages)
        # dapo's token mean over every rank's completions, as TRL does (gradients are averaged over ranks)
        num_items = module.trainer.strategy.reduce(mask.sum().to(torch.float32), reduce_op="mean")
        micro = micro_batches(len(advantages), cfg, mask.device)
        ref_logps = torch.cat([module.ref_logprobs(rollout.rows(i)) for i in micro]) if cfg["beta"] != 0 else None
        old_logps = None  # with one policy epoch the sampling policy is the current one: ratio 1, as in TRL
        if cfg["num_iterations"] > 1:
            with torch.no_grad():
                old_logps = torch.cat([module.logprobs(rollout.rows(i)) for i in micro])
        tokens = mask.sum().clamp(min=1.0)

        def weight(i: torch.Tensor) -> torch.Tensor | float:
            """A micro-batch's share of the whole batch's loss, so that the micro-batch losses add up to it."""
            if cfg["loss_type"] in ("grpo", "dr_grpo"):  # means over sequences
                return len(i) / len(advantages)
            if cfg["loss_type"] == "bnpo":  # a mean over this batch's tokens
                return mask[i].sum() / tokens
            return 1.0  # dapo: already divided by the whole batch's tokens (num_items)

        def losses(totals: dict[str, torch.Tensor]):
            for i in micro:
                logps = module.logprobs(rollout.rows(i))
                loss, stats = grpo_loss(
                    logps,
                    logps.detach() if old_logps is None else old_logps[i],
                    advantages[i],
                    mask[i],
                    loss_type=cfg["loss_type"],
                    epsilon=cfg["epsilon"],
                    epsilon_high=cfg["epsilon_high"],
                    beta=cfg["beta"],
                    use_bias_correction_kl=cfg["use_bias_correction_kl"],
                    ref_logps=None if ref_logps is None else ref_logps[i],
                    max_completion_length=cfg["max_completion_length"],
                    num_items_in_batch=num_items,
                )
                loss = loss * weight(i)
                share = mask[i].sum() / tokens  # the statistics are token means
                for k, v in {"loss": loss.detach(), **stats}.items():
                    totals[k] = totals.get(k, 0.0) + (v if k == "loss" else v * share)
                yield loss

        for _ in range(cfg["num_iterations"]):
            totals: dict[str, torch.Tensor] = {}
            module.step_optimizer(losses(totals))
        return totals

    def state_dict(self) -> dict[str, Any]:
        return {"kl_coef": None}  # no KL coefficient to adapt; the entry stays so checkpoints have one format


class PPO(Algorithm):
    """PPO as in the paper (prewrite.algorithms.ppo): KL-penalised per-token rewards, GAE over the value
    head's estimates, then `num_ppo_epochs` passes of clipped policy + value losses over minibatches.
    Keeps the KL coefficient, adapted after every update when `adap_kl_ctrl` (Ziegler et al. 2019)."""

    name = "ppo"

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self.kl_coef = float(cfg["kl_coef"])  # the configured start; adapted during training when adap_kl_ctrl

    @property
    def kl_weight(self) -> float:
        # an adaptive coefficient may move off 0, so it needs the reference whatever its start
        return 1.0 if self.cfg["adap_kl_ctrl"] else self.cfg["kl_coef"]

    def value_head(self, hidden_size: int) -> torch.nn.Module:
        # the critic: a linear value head on the policy's last hidden state
        head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(head.weight)  # V = 0 at the start: no random critic noise in GAE
        torch.nn.init.zeros_(head.bias)
        return head

    def update(self, module: Learner, rollout: Rollout, rewards: torch.Tensor, mask: torch.Tensor) -> dict:
        cfg, n = self.cfg, rollout.completion_ids.size(1)
        rewards = distributed.this_rank(module, rewards)  # PPO has no groups: each rank its own rollouts
        # a rewrite whose reward could not be computed is left out of the update
        mask = mask * (~torch.isnan(rewards)).unsqueeze(1).to(mask.dtype)
        scores = torch.nan_to_num(rewards, nan=0.0)

        def logprobs_and_values(idx):
            ids, att = rollout.input_ids[idx], rollout.attention_mask[idx]
            return completion_logprobs_and_values(module.policy, module.value_head, ids, att, n, cfg["temperature"])

        everyone = torch.arange(len(rewards), device=mask.device)
        with torch.no_grad():
            old_logps, old_values = logprobs_and_values(everyone)
            ref_logps = module.ref_logprobs(rollout) if self.kl_coef != 0 or cfg["adap_kl_ctrl"] else old_logps
            token_rewards, kl = ppo.token_rewards(scores, old_logps, ref_logps, mask, self.kl_coef)
            advantages, returns = ppo.gae(token_rewards, old_values, mask, cfg["gamma"], cfg["lam"])
            advantages = ppo.masked_whiten(advantages, mask)

        def losses(batch: torch.Tensor, totals: dict[str, torch.Tensor]):
            tokens = mask[batch].sum().clamp(min=1.0)
            for idx in batch.chunk(cfg["gradient_accumulation_steps"]):
                logps, values = logprobs_and_values(idx)
                policy_loss, value_loss, stats = ppo.ppo_losses(
                    logps,
                    old_logps[idx],
                    advantages[idx],
                    values,
                    old_values[idx],
                    returns[idx],
                    mask[idx],
                    cliprange=cfg["cliprange"],
                    cliprange_value=cfg["cliprange_value"],
                )
                share = mask[idx].sum() / tokens  # the losses and statistics are token means over the minibatch
                parts = {"loss": policy_loss + cfg["vf_coef"] * value_loss, "policy_loss": policy_loss,
                         "value_loss": value_loss, **stats}  # fmt: skip
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + v.detach() * share
                yield parts["loss"] * share

        for _ in range(cfg["num_ppo_epochs"]):
            for batch in torch.randperm(len(rewards), device=mask.device).chunk(cfg["num_mini_batches"]):
                totals: dict[str, torch.Tensor] = {}
                module.step_optimizer(losses(batch, totals))

        sequence_kl = kl.sum(1).mean().item()  # KL(pi || ref) of a whole rewrite, as the controller sees it
        kl_coef = self.kl_coef  # the one this update used, logged
        if cfg["adap_kl_ctrl"]:
            self.kl_coef = ppo.adaptive_kl_coef(kl_coef, sequence_kl, cfg["target"], cfg["horizon"], len(rewards))
        return {
            **totals,  # the last minibatch's losses and statistics
            "kl": sequence_kl,
            "kl_coef": kl_coef,
            "value_mean": ppo.masked_mean(old_values, mask),
            "returns_mean": ppo.masked_mean(returns, mask),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kl_coef") is not None:  # None: none saved (a GRPO run's checkpoint): keep the configured start
            self.kl_coef = state["kl_coef"]


ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (GRPO, PPO)}


def build_algorithm(cfg: dict[str, Any]) -> Algorithm:
    """The algorithm the config's `name` picks (conf/algorithm/<name>.yaml)."""
    name = cfg["name"]
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name={name!r}; expected one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](cfg)
