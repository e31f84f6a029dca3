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


def label_choices(backend_cfg, task) -> list[str] | None:
    """The label verbalizers the backend chooses among for `task`, or None when it decodes."""
    if not label_scoring(backend_cfg, task):
        if backend_cfg.get("content_free_inputs"):
            raise ValueError(
                f"task_backend.content_free_inputs={list(backend_cfg.content_free_inputs)} calibrates the choice "
                f"among a classification task's labels, but answers to {getattr(task, 'name', None)!r} are decoded "
                "(constrained=false, or a qa or math task under auto); set task_backend.content_free_inputs=[]"
            )
        return None
    if task is None or task.kind != "classification":
        kind = "no task" if task is None else f"task {task.name!r} of kind {task.kind!r}"
        raise ValueError(
            f"task_backend.constrained=true chooses among a classification task's labels, but got {kind}; "
            "set task_backend.constrained=false (or auto) for qa and math tasks"
        )
    return list(task.labels.values())


def build_backend(backend_cfg, cache_cfg: Mapping | None = None, task=None) -> TaskBackend:
    """The configured backend (`task_backend`), wrapped in the response cache when `cache.enabled`.

    A backend that scores labels (`label_scoring`) answers a classification task by choosing among its
    label verbalizers; it is given them here, from `task`, so the scorer's interface stays the same."""
    from hydra.utils import instantiate

    from prewrite.backends.cache import CachedBackend, ResponseCache

    extra = {}
    choices = label_choices(backend_cfg, task)
    if choices:
        extra["choices"] = choices
    if "constrained" in backend_cfg:
        extra["constrained"] = choices is not None
    backend = instantiate(backend_cfg, **extra)
    if not cache_cfg or not cache_cfg.get("enabled", False):
        return backend
    if not cache_cfg.get("path"):
        raise ValueError("cache.enabled=true needs cache.path (the SQLite file shared by runs), got none")
    return CachedBackend(backend, ResponseCache(cache_cfg["path"]))


def build_backends(backend_cfg, cache_cfg: Mapping | None, tasks: list) -> list[TaskBackend]:
    """One backend per task of a training (the members of a mixture), with one model loaded once. A
    backend with the `constrained` option gets a twin per task that chooses among that task's labels
    (or decodes), counting its usage apart (`usage_over` sums them); any other is shared."""
    first = build_backend(backend_cfg, cache_cfg, tasks[0])
    if "constrained" not in backend_cfg:
        return [first] * len(tasks)
    return [first] + [first.with_choices(label_choices(backend_cfg, t)) for t in tasks[1:]]


def usage_over(backends: list[TaskBackend]) -> dict[str, float]:
    """The summed usage snapshots of the distinct backends (a shared one counts once); no hit rate."""
    total: dict[str, float] = {}
    for backend in {id(b): b for b in backends}.values():
        for key, value in backend.usage_snapshot().items():
            if key != "cache_hit_rate":
                total[key] = total.get(key, 0.0) + value
    return total
