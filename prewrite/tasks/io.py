"""Reading task data files with errors that name the file and line."""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

PACKAGED_DATA_DIR = Path(__file__).parent / "data"


def data_path(path: str) -> Path:
    """Relative paths point into the data shipped with the package (prewrite/tasks/data)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PACKAGED_DATA_DIR / p


def read_text(path: Path) -> str:
    """A data file's text: UTF-8, a leading byte-order mark dropped; any other encoding is refused with
    the file, line and byte offset of the first byte that is not UTF-8."""
    if not path.exists():
        raise FileNotFoundError(f"Task data file not found: {path}")
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = start + e.start
        line = data.count(b"\n", 0, at) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[at]:02x} at byte offset {at}: {e.reason}); save the file as UTF-8"
        ) from None


def read_jsonl(path: Path, linenos: list[int] | None = None) -> list[dict]:
    """Rows of a JSONL file (blank lines skipped); `linenos`, if given, receives each row's line number."""
    rows = []
    with io.StringIO(read_text(path)) as f:
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
            if linenos is not None:
                linenos.append(lineno)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: Path, required: list[str] = (), task: str = "?") -> list[dict]:
    """Rows of a JSONL, CSV or Parquet file, chosen by extension. For CSV and Parquet every column in
    `required` must be in the header (the error names the column and the file); JSONL rows are
    checked one by one by the caller, so its errors can name the line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path)
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected one of {TABLE_SUFFIXES}")
    if not path.exists():
        raise FileNotFoundError(f"Task data file not found: {path}")
    import pandas as pd

    text = read_text(path) if suffix == ".csv" else None
    try:
        if text is not None:  # strings as written: no type guessing, empty cells stay ""
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        else:
            df = pd.read_parquet(path)
    except (ValueError, OSError) as e:  # pandas' EmptyDataError / ParserError, pyarrow's ArrowInvalid
        raise ValueError(f"{path}: not a readable {suffix[1:].upper()} file: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: no column {missing[0]!r} required by task {task!r} (columns: {list(map(str, df.columns))})"
        )
    if df.empty:
        raise ValueError(f"{path}: no rows")
    rows = df.to_dict(orient="records")
    return [{str(k): _native(v) for k, v in row.items()} for row in rows]


def _native(value):
    """Plain Python values: numpy scalars and arrays (Parquet list columns) as Python ones, NaN as None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value
