"""Scoring rewrites: one task-LLM pass over (rewrite x shared examples) feeds every metric."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hydra.utils import get_method

from prewrite.rewards import metrics
from prewrite.tasks import Task

RewardFunc = Callable[..., list]


def resolve_reward_func(name: str) -> RewardFunc:
    """A metric of prewrite.rewards.metrics by name, or any function by dotted path (a TRL reward)."""
    func = getattr(metrics, name, None)
    if callable(func):
        return func
    try:
        return get_method(name)
    except Exception as e:
        raise ValueError(
            f"Unknown reward function {name!r}: not a metric in prewrite.rewards.metrics and not an importable "
            f"dotted path ({e})"
        ) from None


@dataclass
class Scores:
    rewards: list[float | None]  # one per rewrite; None where no metric could be computed
    metrics: dict[str, list[float | None]]  # metric name -> per-rewrite mean over the examples
    answers: list[list[str]]  # task-LLM answers, [rewrite][example]


def _mean(values: Sequence[float | None]) -> float | None:
    valid = [v for v in values if v is not None and not math.isnan(v)]
    return sum(valid) / len(valid) if valid else None


class RewriteScorer:
    def __init__(self, task: Task, backend, reward_funcs: Sequence[str], reward_weights: Sequence[float] | None):
        weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
        if len(weights) != len(reward_funcs):
            raise ValueError(
                f"reward_weights has {len(weights)} entries but reward_funcs has {len(reward_funcs)}: "
                f"{list(reward_funcs)}"
            )
        self.task = task
        self.backend = backend
        # A weight-0 function is never computed.
        self.weighted = [(resolve_reward_func(n), w) for n, w in zip(reward_funcs, weights, strict=True) if w != 0]
        if not self.weighted:
            raise ValueError(f"every reward weight is 0 ({list(reward_funcs)}, {weights}): nothing to optimize")

    def __call__(self, rewrites: Sequence[str], rows: Sequence[dict]) -> Scores:
        n = len(rows)
        prompts = [self.task.prompt(rw, row) for rw in rewrites for row in rows]
        answers = self.backend.generate(prompts)
        columns = {k: [row[k] for row in rows] * len(rewrites) for k in rows[0]}
        per_metric: dict[str, list[float | None]] = {}
        for func, _ in self.weighted:
            values = func(prompts=prompts, completions=answers, task=self.task, **columns)
            per_metric[func.__name__] = [_mean(values[i * n : (i + 1) * n]) for i in range(len(rewrites))]
        rewards: list[float | None] = []
        for i in range(len(rewrites)):
            parts = [(per_metric[f.__name__][i], w) for f, w in self.weighted]
            rewards.append(None if any(v is None for v, _ in parts) else sum(v * w for v, w in parts))
        return Scores(rewards, per_metric, [answers[i * n : (i + 1) * n] for i in range(len(rewrites))])
