"""Reading task data files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

PACKAGED_DATA_DIR = Path(__file__).parent / "data"


def data_path(path: str) -> Path:
    """Relative paths point into the data shipped with the package (prewrite/tasks/data)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PACKAGED_DATA_DIR / p


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"Task data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
