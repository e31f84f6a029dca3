"""The persistent response cache: keys, hits and misses, persistence, two writers, corruption."""

import logging
import multiprocessing
import os
import sqlite3

import pytest

from prewrite.backends import build_backend
from prewrite.backends.cache import CachedBackend, ResponseCache
from prewrite.backends.hf import folder_fingerprint
from prewrite.backends.openai import OpenAIBackend
from tests.fake_backend import FakeBackend, write_keys

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cache_path(tmp_path):
    return tmp_path / "cache" / "responses.sqlite"


def test_only_misses_reach_the_model_once_each_and_answers_keep_their_order(cache_path):
    inner = FakeBackend()
    cached = CachedBackend(inner, ResponseCache(cache_path))
    assert cached.generate(["a", "b", "a"]) == ["fake:a", "fake:b", "fake:a"]
    assert inner.received == [["a", "b"]]  # the repeated "a" was sent once
    assert (cached.hits, cached.misses, cached.deduplicated) == (0, 2, 1)
    assert cached.generate(["c", "b", "a", "c"]) == ["fake:c", "fake:b", "fake:a", "fake:c"]
    assert inner.received[-1] == ["c"]
    assert (cached.hits, cached.misses, cached.deduplicated) == (2, 3, 2)
    assert cached.hit_rate == pytest.approx(2 / 5)
    assert cached.num_calls == inner.num_calls == 3  # real model calls only
    cache_counts = {"cache_hits": 2.0, "cache_misses": 3.0, "cache_hit_rate": 0.4}
    assert cached.usage_snapshot() == inner.usage_snapshot() | cache_counts and inner.usage_snapshot()["calls"] == 3


def test_loglikelihoods_are_keyed_by_continuation_and_apart_from_generations(cache_path):
    inner = FakeBackend()
    cached = CachedBackend(inner, ResponseCache(cache_path))
    cached.generate(["p"])
    first = cached.loglikelihood(["p", "p", "p"], ["yes", "no", ""])
    assert first == [-4.0, -3.0, None]  # None (an empty continuation) is stored and served as None
    assert cached.loglikelihood(["p", "p", "p"], ["yes", "no", ""]) == first
    assert cached.loglikelihood(["p"], ["maybe"]) == [-6.0]
    assert inner.received == [["p"], [("p", "yes"), ("p", "no"), ("p", "")], [("p", "maybe")]]


def test_every_part_of_the_identity_changes_the_key(cache_path):
    cache = ResponseCache(cache_path)
    base = dict(model="m1", max_new_tokens=4, temperature=0.0, top_p=1.0)
    variants = [
        base,
        {**base, "model": "m2"},
        {**base, "max_new_tokens": 8},
        {**base, "temperature": 0.7},
        {**base, "top_p": 0.9},
    ]
    backends = [CachedBackend(FakeBackend(**v), cache) for v in variants]
    keys = {b.key("generate", "same prompt") for b in backends}
    assert len(keys) == len(variants)
    # ... and a different answer for each: none is served another identity's answer
    for b in backends:
        b.generate(["same prompt"])
    assert [b.misses for b in backends] == [1] * len(variants)
    assert len(cache) == len(variants)


def test_the_real_backends_identities_cover_model_and_sampling(tmp_path):
    def key(b):
        return CachedBackend(b, ResponseCache(tmp_path / "k.sqlite")).key("generate", "p")

    api = dict(model="m", base_url="http://127.0.0.1:8000/v1", max_new_tokens=16)
    keys = {
        key(OpenAIBackend(**{**api, **change}))
        for change in [{}, {"model": "m2"}, {"base_url": "http://10.0.0.2:8000/v1"}, {"max_new_tokens": 32}]
    }
    assert len(keys) == 4
    # Settings that cannot change an answer do not split the cache.
    assert key(OpenAIBackend(**api, max_concurrency=2, timeout_s=1.0)) in keys


def test_a_model_folder_fingerprint_follows_its_config_and_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    first = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == first
    weights.write_bytes(b"\0" * 65)  # retrained weights: new size
    second = folder_fingerprint(tmp_path)
    os.utime(weights, ns=(1, 1))  # same size, rewritten: new mtime
    third = folder_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 16}')
    assert len({first, second, third, folder_fingerprint(tmp_path)}) == 4


def test_answers_persist_across_instances_on_the_same_file(cache_path):
    first = CachedBackend(FakeBackend(), ResponseCache(cache_path))
    first.generate(["a", "b"])
    first.cache.close()
    inner = FakeBackend()
    second = CachedBackend(inner, ResponseCache(cache_path))
    assert second.generate(["b", "a"]) == ["fake:b", "fake:a"]
    assert inner.received == [] and second.hits == 2


def test_two_processes_write_overlapping_keys_at_once(cache_path):
    ResponseCache(cache_path).close()  # created first, as a run would before its sweep jobs start
    ctx = multiprocessing.get_context("spawn")  # fork would copy this process's threads and connections
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=write_keys, args=(cache_path, a, b, barrier, results)) for a, b in [(0, 300), (150, 450)]
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(50)
    assert [p.exitcode for p in procs] == [0, 0]
    counts = sorted(results.get(timeout=5) for _ in procs)
    assert all(hits + misses == 300 for _, hits, misses in counts)
    # Each of the 450 keys was computed by at least one process; overlapping ones possibly by both.
    assert 450 <= sum(misses for _, _, misses in counts) <= 600
    inner = FakeBackend()
    check = CachedBackend(inner, ResponseCache(cache_path))
    assert check.generate([f"prompt {i}" for i in range(450)]) == [f"fake:prompt {i}" for i in range(450)]
    assert inner.received == [] and len(check.cache) == 450


@pytest.mark.parametrize("damage", ["whole file", "pages after the header"])
def test_a_corrupt_file_is_moved_aside_and_rebuilt(cache_path, caplog, damage):
    cache = ResponseCache(cache_path)
    CachedBackend(FakeBackend(), cache).generate([f"prompt {i} " + "x" * 200 for i in range(500)])
    cache.close()
    original = cache_path.read_bytes()
    with open(cache_path, "r+b") as f:
        if damage == "whole file":
            f.write(os.urandom(len(original)))
        else:
            f.seek(4096)  # keep page 1 (the header and schema): only the data pages are garbage
            f.write(os.urandom(len(original) - 4096))
    damaged = cache_path.read_bytes()

    with caplog.at_level(logging.WARNING, logger="prewrite.backends.cache"):
        rebuilt = ResponseCache(cache_path)
    asides = list(cache_path.parent.glob("responses.sqlite.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_bytes() == damaged  # kept for inspection, untouched
    assert str(cache_path) in caplog.text and str(asides[0]) in caplog.text and "corrupt" in caplog.text
    assert len(rebuilt) == 0
    inner = FakeBackend()
    assert CachedBackend(inner, rebuilt).generate(["a"]) == ["fake:a"] and inner.received == [["a"]]
    assert sqlite3.connect(cache_path).execute("PRAGMA quick_check").fetchone() == ("ok",)


def test_corruption_found_mid_run_turns_the_cache_off_and_the_run_goes_on(cache_path, caplog):
    prompts = [f"prompt {i} " + "x" * 200 for i in range(500)]
    cache = ResponseCache(cache_path)
    CachedBackend(FakeBackend(), cache).generate(prompts)
    cache.close()
    cache = ResponseCache(cache_path)  # opens and checks a sound file
    # as with a cache far larger than memory: the pages the check read are not kept
    cache._connection().execute("PRAGMA cache_size = 1")
    with open(cache_path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(cache_path.stat().st_size - 4096))

    inner = FakeBackend()
    backend = CachedBackend(inner, cache)
    with caplog.at_level(logging.WARNING, logger="prewrite.backends.cache"):
        assert backend.generate(prompts[:3] + ["new"]) == [f"fake:{p}" for p in prompts[:3] + ["new"]]
        assert backend.generate(["new 2"]) == ["fake:new 2"]  # writes skipped, reads skipped: no error
    assert inner.received == [prompts[:3] + ["new"], ["new 2"]]  # answered by the model instead
    assert cache.broken and caplog.text.count("turned out corrupt") == 1 and str(cache_path) in caplog.text
    cache.close()
    ResponseCache(cache_path)  # the next start moves it aside
    assert len(list(cache_path.parent.glob("responses.sqlite.corrupt-*"))) == 1


def test_a_backend_without_an_identity_cannot_be_cached(cache_path):
    class NoIdentity:
        def generate(self, prompts):
            return prompts

    with pytest.raises(TypeError, match="NoIdentity cannot be cached.*cache.enabled=false"):
        CachedBackend(NoIdentity(), ResponseCache(cache_path))


def test_build_backend_wraps_the_configured_backend_when_the_cache_is_enabled(compose_train, tmp_path):
    cfg = compose_train("task_backend=openai", f"cache.path={tmp_path}/c.sqlite")
    backend = build_backend(cfg.task_backend, cfg.cache)
    assert isinstance(backend, CachedBackend) and isinstance(backend.inner, OpenAIBackend)
    assert backend.inner.max_new_tokens == cfg.task.max_new_tokens
    assert backend.cache.path == tmp_path / "c.sqlite"
    cfg = compose_train("task_backend=openai", "cache.enabled=false")
    assert isinstance(build_backend(cfg.task_backend, cfg.cache), OpenAIBackend)


@pytest.mark.integration
def test_the_real_task_model_is_served_from_the_cache_the_second_time(cache_path):
    from omegaconf import OmegaConf

    from prewrite.backends.hf import HFBackend
    from prewrite.tasks import load_task
    from tests.conftest import CONF

    task = load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / "sst2.yaml")))
    prompts = [task.prompt(task.instruction, row) for row in task.splits["test"][:4]]
    model = HFBackend("embedded:smollm2-135m-instruct", max_new_tokens=4)
    cached = CachedBackend(model, ResponseCache(cache_path))
    first = cached.generate(prompts)
    assert model.num_calls == 4 and cached.misses == 4
    usage = model.usage_snapshot()
    assert usage["calls"] == 4 and usage["prompt_tokens"] > 4 * 10 and 4 <= usage["completion_tokens"] <= 16

    again = CachedBackend(model, ResponseCache(cache_path))  # a second run on the same file
    assert again.generate(prompts) == first
    assert model.num_calls == 4 and again.hits == 4 and again.misses == 0
    # A different generation length is another answer: it misses.
    assert CachedBackend(HFBackend("embedded:smollm2-135m-instruct", max_new_tokens=2), again.cache).key(
        "generate", prompts[0]
    ) != again.key("generate", prompts[0])
