"""The algorithms as objects: GRPO and PPO updates of the module's policy, and build_algorithm to pick one
by the config's `name`. The math is in prewrite.algorithms.grpo and .ppo (stateless, tested on its own);
here is what uses it on a rollout: which log-probs, how many epochs and optimizer steps, what state is kept.
"""

from __future__ import annotations

from typing import Any

import torch

from prewrite import distributed
from prewrite.algorithms import ppo
from prewrite.algorithms.base import Algorithm, Learner
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
        ref_logps = module.ref_logprobs(rollout) if cfg["beta"] != 0 else None
        with torch.no_grad():  # with one policy epoch the sampling policy is the current one: ratio 1, as in TRL
            old_logps = module.logprobs(rollout) if cfg["num_iterations"] > 1 else None
        for _ in range(cfg["num_iterations"]):
            logps = module.logprobs(rollout)
            loss, stats = grpo_loss(
                logps,
                logps.detach() if old_logps is None else old_logps,
                advantages,
                mask,
                loss_type=cfg["loss_type"],
                epsilon=cfg["epsilon"],
                epsilon_high=cfg["epsilon_high"],
                beta=cfg["beta"],
                use_bias_correction_kl=cfg["use_bias_correction_kl"],
                ref_logps=ref_logps,
                max_completion_length=cfg["max_completion_length"],
                num_items_in_batch=num_items,
            )
            module.step_optimizer(loss)
        return {"loss": loss.detach(), **stats}

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

        for _ in range(cfg["num_ppo_epochs"]):
            for idx in torch.randperm(len(rewards), device=mask.device).chunk(cfg["num_mini_batches"]):
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
                module.step_optimizer(policy_loss + cfg["vf_coef"] * value_loss)

        sequence_kl = kl.sum(1).mean().item()  # KL(pi || ref) of a whole rewrite, as the controller sees it
        kl_coef = self.kl_coef  # the one this update used, logged
        if cfg["adap_kl_ctrl"]:
            self.kl_coef = ppo.adaptive_kl_coef(kl_coef, sequence_kl, cfg["target"], cfg["horizon"], len(rewards))
        return {
            "loss": (policy_loss + cfg["vf_coef"] * value_loss).detach(),
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "kl": sequence_kl,
            "kl_coef": kl_coef,
            "value_mean": ppo.masked_mean(old_values, mask),
            "returns_mean": ppo.masked_mean(returns, mask),
            **stats,
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
