"""Per-example metrics with TRL's reward-function calling convention.

`prompts` are the task prompts, `completions` the task LLM's answers, and the dataset columns of the
examples arrive as keyword arguments (plus `task`). Each returns one float per example, or None
where the value cannot be computed.
"""

from __future__ import annotations

from prewrite.tasks import Task


def accuracy(prompts: list[str], completions: list[str], task: Task, **columns) -> list[float | None]:
    """1.0 where the parsed answer equals the gold label; an unparseable answer is wrong (0.0)."""
    golds = columns[task.label_field]
    return [float(task.parse(c) == g) for c, g in zip(completions, golds, strict=True)]
