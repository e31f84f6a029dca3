"""How results read: a score as text, rows as the column table MLflow's `log_table` takes, and the
per-example table of the reported methods on test."""

from __future__ import annotations

from prewrite.rewards import Scores
from prewrite.rewards.scorer import gold_text
from prewrite.tasks import Task


def score_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def columns(rows: list[dict]) -> dict[str, list]:
    """Rows (dicts) as MLflow's column table; a key missing from a row is null there."""
    return {k: [r.get(k) for r in rows] for k in rows[0]}


def examples_table(task: Task, methods: list[str], scores: Scores, rows: list[dict]) -> list[dict]:
    """One row per test example: its input and gold answer, then each method's answer and score side by
    side, so a row shows where a rewrite gains or loses against the initial instruction. A metric defined
    only over a whole sample (macro-F1) has no per-example score: null."""
    per_example = scores.per_example.get(task.metric)
    table = []
    for j, row in enumerate(rows):
        text = task.input_text(row)
        gold = task.gold(row)
        gold = " | ".join(map(str, gold)) if isinstance(gold, list | tuple) else gold_text(task, gold)
        entry = {"input": text, "gold": gold}
        for i, method in enumerate(methods):
            entry[f"{method}_answer"] = scores.answers[i][j]
            entry[f"{method}_{task.metric}"] = per_example[i][j] if per_example else None
        table.append(entry)
    return table
