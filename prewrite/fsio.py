"""Durable file writes for the files a re-launch reads back (settings, run ids, results, tables), and the
free-space warning given before a large write.

A file written in place and cut short by a kill or a full disk is read back torn, and a torn state
file breaks every later re-launch. `atomic_write_text` writes a temporary file beside the target,
fsyncs it, renames it over the target and fsyncs the folder: a reader sees the old content or the
new, never a mix, and the new one survives a power loss once the call returns.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new name in `folder` durable (the folder's entry list is its own data)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary name: two processes writing one file (sweep jobs) never share a temporary
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 if absent)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def warn_if_short_of_space(folder: Path, need: int, what: str) -> None:
    """Say before writing `need` bytes into `folder` that they will likely not fit (with a margin), rather
    than fail in the middle of the write."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < 1.1 * need:
        log.warning("Only %.2f GB free in %s; %s needs about %.2f GB", free / 1e9, folder, what, need / 1e9)
