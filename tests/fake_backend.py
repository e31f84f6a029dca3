"""A stand-in task backend for cache tests, and a cache-writing worker for multiprocess tests.

Only light imports here: spawned worker processes import this module.
"""

from prewrite.backends.base import TaskBackend
from prewrite.backends.cache import CachedBackend, ResponseCache


class FakeBackend(TaskBackend):
    """Stands in for a model where the model is not the point: answers are a function of the request,
    and every request it receives is recorded."""

    def __init__(self, model="fake", **sampling):
        super().__init__()
        self.model, self.sampling = model, sampling
        self.received: list[list] = []

    def cache_identity(self):
        return {"model": self.model, **self.sampling}

    def generate(self, prompts):
        self.received.append(list(prompts))
        self.usage.add(calls=len(prompts))
        return [f"{self.model}:{p}" for p in prompts]

    def loglikelihood(self, prompts, continuations):
        self.received.append(list(zip(prompts, continuations, strict=True)))
        self.usage.add(calls=len(prompts))
        return [-float(len(p) + len(c)) if c else None for p, c in zip(prompts, continuations, strict=True)]


class PromptSpy:
    """Wraps a real backend and records every prompt asked of it."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def generate(self, prompts):
        self.prompts.extend(prompts)
        return self.inner.generate(prompts)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def spy_on_backends(monkeypatch, module) -> list[PromptSpy]:
    """Makes `module.build_backend` return spies on the backends it builds; returns them, in order."""
    spies, real_build = [], module.build_backend
    monkeypatch.setattr(module, "build_backend", lambda *a: spies.append(PromptSpy(real_build(*a))) or spies[-1])
    return spies


def write_keys(path, start, stop, barrier, results):
    """One of several processes filling the same cache file at once. It lives here, not in the test
    module, so that a spawned child imports nothing heavy (the test module imports torch)."""
    cached = CachedBackend(FakeBackend(), ResponseCache(path))
    barrier.wait(30)
    prompts = [f"prompt {i}" for i in range(start, stop)]
    for i in range(0, len(prompts), 5):  # many small transactions: the writers interleave
        assert cached.generate(prompts[i : i + 5]) == [f"fake:{p}" for p in prompts[i : i + 5]]
    results.put((start, cached.hits, cached.misses))
