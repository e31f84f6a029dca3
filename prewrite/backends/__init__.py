"""Task-LLM backends: answer a list of user messages with a frozen model (the contract: base.TaskBackend)."""

from __future__ import annotations

from collections.abc import Mapping

from prewrite.backends.base import TaskBackend


def label_scoring(backend_cfg, task) -> bool:
    """Whether the backend answers `task` by choosing among its label verbalizers (`constrained`:
    true, false, or auto = for classification tasks). Backends without the option always decode."""
    value = backend_cfg.get("constrained", False)
    if value not in (True, False, "auto"):
        raise ValueError(f"task_backend.constrained={value!r}; expected true, false or auto")
    if value == "auto":
        return task is not None and task.kind == "classification"
    return value


def build_backend(backend_cfg, cache_cfg: Mapping | None = None, task=None) -> TaskBackend:
    """The configured backend (`task_backend`), wrapped in the response cache when `cache.enabled`.

    A backend that scores labels (`label_scoring`) answers a classification task by choosing among its
    label verbalizers; it is given them here, from `task`, so the scorer's interface stays the same."""
    from hydra.utils import instantiate

    from prewrite.backends.cache import CachedBackend, ResponseCache

    extra = {}
    constrained = label_scoring(backend_cfg, task)
    if constrained:
        if task is None or task.kind != "classification":
            kind = "no task" if task is None else f"task {task.name!r} of kind {task.kind!r}"
            raise ValueError(
                f"task_backend.constrained=true chooses among a classification task's labels, but got {kind}; "
                "set task_backend.constrained=false (or auto) for qa and math tasks"
            )
        extra["choices"] = list(task.labels.values())
    if "constrained" in backend_cfg:
        extra["constrained"] = constrained
    backend = instantiate(backend_cfg, **extra)
    if not cache_cfg or not cache_cfg.get("enabled", False):
        return backend
    if not cache_cfg.get("path"):
        raise ValueError("cache.enabled=true needs cache.path (the SQLite file shared by runs), got none")
    return CachedBackend(backend, ResponseCache(cache_cfg["path"]))
