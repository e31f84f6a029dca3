"""How results read: a score as text, and rows as the column table MLflow's `log_table` takes."""

from __future__ import annotations


def score_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def columns(rows: list[dict]) -> dict[str, list]:
    """Rows (dicts) as MLflow's column table; a key missing from a row is null there."""
    return {k: [r.get(k) for r in rows] for k in rows[0]}
