"""A persistent task-LLM response cache shared by runs and sweep jobs (one SQLite file, WAL mode).

A response is keyed by a hash of everything that decides it: the backend's identity (model and
revision, see each backend's `cache_identity()`) with its sampling parameters, the request kind
(generate, or loglikelihood with its continuation) and the exact prompt. Greedy decoding makes the
answer a function of that key, so any run may reuse any other run's answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prewrite.backends.base import FailedAnswer, TaskBackend, TaskBackendError

log = logging.getLogger(__name__)

# Bump when the key derivation or the stored value format changes: old entries then simply miss.
KEY_VERSION = 1
_SQL_CHUNK = 500  # keys per SELECT ... IN (...): below SQLite's bound-parameter limit on every version


class ResponseCache:
    """Maps request keys to JSON-encoded answers in one SQLite file that many processes share.

    WAL mode lets readers run while one process writes; `busy_timeout` makes a writer wait for another
    writer's lock, and the few `database is locked` errors SQLite still raises (e.g. while a WAL
    checkpoint or the switch to WAL runs) are retried with backoff. Writes take the write lock up front
    (BEGIN IMMEDIATE) so that two writers never deadlock upgrading a read lock.

    A file found corrupt when it opens is moved aside and rebuilt. One found corrupt later, while a run
    reads or writes it, is left alone (other processes may hold it open): the run warns once and goes
    on without the cache, asking the task model instead; the next start moves the file aside.
    """

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 30.0, lock_retries: int = 8):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.lock_retries = lock_retries
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self.broken: str | None = None  # why the cache stopped being used mid-run (corruption)
        self._connection()  # open and check now: a corrupt file is reported when the run starts

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    # -- opening, checking, rebuilding -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross fork(): a forked child (a dataloader worker, a sweep launcher)
        # opens its own.
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = self._retry(self._open, "open")
            except sqlite3.OperationalError:
                raise  # locked for too long, or unreadable: not evidence of corruption
            except sqlite3.DatabaseError as e:
                self._move_aside(e)
                self._conn = self._retry(self._open, "rebuild")
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; writes open their own explicit transaction.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")  # "file is not a database" surfaces here
            conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: survives a process crash, much faster
            # quick_check reads every page (seconds for a GB-sized cache) but skips the slow index
            # cross-checks of integrity_check; it finds damaged pages, which is what corruption looks like.
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, error: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}"), n + 1
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return  # another process found it corrupt first and moved it
        # A stale WAL next to a fresh database would be replayed into it: move them with the file.
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        log.warning(
            "Response cache %s is corrupt (%s): moved it to %s and started an empty cache in its place.",
            self.path,
            error,
            aside,
        )

    def _retry(self, fn: Callable, what: str):
        for attempt in range(self.lock_retries + 1):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                transient = "locked" in str(e) or "busy" in str(e)
                if not transient or attempt == self.lock_retries:
                    raise sqlite3.OperationalError(f"response cache {self.path}: {what} failed: {e}") from e
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))

    def _guard(self, fn: Callable, what: str, fallback):
        """Runs a read or write; corruption found now turns the cache off for this process (a cache
        miss costs a task-model call, a crash costs the run)."""
        if self.broken:
            return fallback
        try:
            return self._retry(fn, what)
        except sqlite3.OperationalError:
            raise  # locked for too long, or unreadable: not evidence of corruption
        except sqlite3.DatabaseError as e:
            self.broken = f"{what}: {e}"
            log.warning(
                "Response cache %s turned out corrupt during this run (%s): going on without it (answers "
                "are asked of the task model); the next run moves it aside and starts an empty one.",
                self.path,
                self.broken,
            )
            return fallback

    # -- reading and writing -----------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, object]:
        """The stored answers of those keys that are present."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, object] = {}
        for start in range(0, len(keys), _SQL_CHUNK):
            chunk = keys[start : start + _SQL_CHUNK]
            sql = f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
            read = lambda sql=sql, chunk=chunk: self._connection().execute(sql, chunk).fetchall()  # noqa: E731
            rows = self._guard(read, "read", [])
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put_many(self, items: dict[str, object]) -> None:
        """Stores answers. A key already present keeps its first answer: with greedy decoding a second
        writer of the same key would write the same answer anyway."""
        if not items:
            return
        now = time.time()
        rows = [(k, json.dumps(v), now) for k, v in items.items()]

        def write():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR IGNORE INTO responses (key, value, created) VALUES (?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._guard(write, "write", None)

    def __len__(self) -> int:
        return self._retry(lambda: self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0], "count")

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


class CachedBackend(TaskBackend):
    """Wraps a backend with the response cache; the same `generate` / `loglikelihood` interface.

    Each call looks every request up, sends only the misses to the wrapped backend (an identical
    request repeated inside a call is sent once), stores their answers and returns all answers in the
    caller's order. `hits` counts requests answered from the cache, `misses` requests sent to the
    model, `deduplicated` repeats of a miss inside one call (answered without a cache hit or a call).
    """

    def __init__(self, inner, cache: ResponseCache):
        identity = getattr(inner, "cache_identity", None)
        if not callable(identity):
            raise TypeError(
                f"{type(inner).__name__} cannot be cached: it has no cache_identity() saying which model and "
                "sampling parameters produce its answers. Set cache.enabled=false or add one."
            )
        self.inner = inner
        self.cache = cache
        # The identity is hashed once: every key is then sha256(identity digest, kind, request).
        self._identity = hashlib.sha256(json.dumps(identity(), sort_keys=True).encode()).hexdigest()
        self.hits = 0
        self.misses = 0
        self.deduplicated = 0

    def __repr__(self) -> str:
        return f"CachedBackend({self.inner!r}, {self.cache!r})"

    def __getattr__(self, name):
        # Anything not about caching (tokenizer, model_name_or_path, ...) is the wrapped backend's.
        if name == "inner":  # not set yet: during unpickling, avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def cache_identity(self) -> dict:
        return self.inner.cache_identity()

    @property
    def content_free_inputs(self) -> tuple[str, ...]:
        return self.inner.content_free_inputs

    def with_choices(self, choices: list[str] | None) -> CachedBackend:
        return CachedBackend(self.inner.with_choices(choices), self.cache)

    @property
    def num_calls(self) -> int:
        return self.inner.num_calls  # real model calls: cache hits cost none

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def key(self, kind: str, prompt: str, continuation: str | None = None) -> str:
        payload = json.dumps([KEY_VERSION, self._identity, kind, prompt, continuation], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def generate(self, prompts: list[str]) -> list[str]:
        keys = [self.key("generate", p) for p in prompts]
        return self._serve(keys, lambda idx: self.inner.generate([prompts[i] for i in idx]))

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float | None]:
        keys = [self.key("loglikelihood", p, c) for p, c in zip(prompts, continuations, strict=True)]
        return self._serve(
            keys, lambda idx: self.inner.loglikelihood([prompts[i] for i in idx], [continuations[i] for i in idx])
        )

    def label_scores(self, prompts: list[str]) -> list[list[float]]:
        keys = [self.key("label_scores", p) for p in prompts]
        return self._serve(keys, lambda idx: self.inner.label_scores([prompts[i] for i in idx]))

    def _serve(self, keys: Sequence[str], run: Callable[[list[int]], list]) -> list:
        answers = self.cache.get_many(keys)
        first_miss: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in answers:
                self.hits += 1
            elif k in first_miss:
                self.deduplicated += 1
            else:
                first_miss[k] = i
        if first_miss:
            idx = list(first_miss.values())
            try:
                fresh = run(idx)
            except TaskBackendError as e:  # an outage: keep what arrived, so a re-launch need not ask again
                missed = list(first_miss)
                arrived = {missed[j]: a for j, a in e.answered.items()}
                self.cache.put_many({k: a for k, a in arrived.items() if not isinstance(a, FailedAnswer)})
                known = answers | arrived
                e.answered = {i: known[k] for i, k in enumerate(keys) if k in known}  # by the caller's positions
                raise
            if len(fresh) != len(idx):
                raise RuntimeError(f"{type(self.inner).__name__} returned {len(fresh)} answers for {len(idx)} requests")
            new = dict(zip(first_miss, fresh, strict=True))
            self.cache.put_many({k: a for k, a in new.items() if not isinstance(a, FailedAnswer)})  # asked again later
            answers.update(new)
            self.misses += len(idx)
        return [answers[k] for k in keys]

    def usage_snapshot(self) -> dict[str, float]:
        snap = dict(self.inner.usage_snapshot()) if hasattr(self.inner, "usage_snapshot") else {}
        snap.update(cache_hits=float(self.hits), cache_misses=float(self.misses), cache_hit_rate=self.hit_rate)
        return snap
