"""What the training module asks of an RL algorithm (GRPO, PPO: prewrite.algorithms.updates).

The module owns the models, the optimizer and the loop; an algorithm owns its hyperparameters, its own
state (PPO's adaptive KL coefficient) and its update: the losses and how many optimizer steps a rollout
gets. It reaches the models only through `Learner`, the few things of the module an update uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Protocol

import lightning as L
import torch

from prewrite.rollout.base import Rollout


class Learner(Protocol):
    """What an update uses of the training module (prewrite.lightning_module.PRewriteModule): the policy
    (and, for PPO, its `value_head`), log-probs of a rollout under the policy and under the frozen
    reference, one optimizer step, and the trainer (ranks, reductions)."""

    policy: torch.nn.Module
    trainer: L.Trainer

    def logprobs(self, rollout: Rollout, model: torch.nn.Module | None = None) -> torch.Tensor: ...

    def ref_logprobs(self, rollout: Rollout) -> torch.Tensor: ...

    def step_optimizer(self, losses: Iterable[torch.Tensor]) -> None: ...


def micro_batches(rows: int, cfg: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Row indices of the `gradient_accumulation_steps` micro-batches a batch of `rows` is split into
    (one forward and backward each, one optimizer step for all: the memory of one micro-batch)."""
    return torch.arange(rows, device=device).chunk(cfg["gradient_accumulation_steps"])


class Algorithm(ABC):
    """Base class: subclasses set `name` and implement `kl_weight` and `update`."""

    name: str

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg  # conf/algorithm/<name>.yaml, resolved

    @property
    @abstractmethod
    def kl_weight(self) -> float:
        """The weight of the KL to the frozen reference; 0 means no reference model is loaded."""

    def value_head(self, hidden_size: int) -> torch.nn.Module | None:
        """A critic to train beside the policy, or None. The module registers it as its `value_head`
        submodule, so it is moved, optimised and checkpointed (`value_head.*` keys) with the policy."""
        return None

    @abstractmethod
    def update(self, module: Learner, rollout: Rollout, rewards: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """Train on one rollout; returns the statistics logged as `train/<key>`.

        rewards: [B] over every rank's completions (NaN: no reward); mask: [B, T] over this rank's completion
        tokens. Uses module.logprobs / ref_logprobs (and module.policy, module.value_head), and
        module.step_optimizer(its micro-batches' losses) for each optimizer step; the module steps the LR
        scheduler afterwards.
        """

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume, as entries of the checkpoint's `prewrite` dict."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from the checkpoint's `prewrite` dict (which may predate this algorithm's entries)."""
        return None  # nothing kept by default
