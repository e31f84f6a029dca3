"""Task-LLM backends: answer a list of user messages with a frozen model."""

from __future__ import annotations

from collections.abc import Mapping


def build_backend(backend_cfg, cache_cfg: Mapping | None = None):
    """The configured backend (`task_backend`), wrapped in the response cache when `cache.enabled`."""
    from hydra.utils import instantiate

    from prewrite.backends.cache import CachedBackend, ResponseCache

    backend = instantiate(backend_cfg)
    if not cache_cfg or not cache_cfg.get("enabled", False):
        return backend
    if not cache_cfg.get("path"):
        raise ValueError("cache.enabled=true needs cache.path (the SQLite file shared by runs), got none")
    return CachedBackend(backend, ResponseCache(cache_cfg["path"]))
