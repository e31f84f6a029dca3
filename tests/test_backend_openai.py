"""The OpenAI-compatible backend against a real local HTTP server that fails on request."""

import asyncio
import logging
import socket
import threading
import time

import pytest

from prewrite.backends.base import FailedAnswer, TaskModelUnavailable
from prewrite.backends.cache import CachedBackend, ResponseCache
from prewrite.backends.openai import OpenAIBackend, TaskBackendError
from tests.fault_server import FaultServer

pytestmark = pytest.mark.timeout(60)

FAST = dict(backoff_base_s=0.01, backoff_max_s=1.0, timeout_s=5.0)  # retries in ms, not seconds


def backend(server: FaultServer, **kwargs) -> OpenAIBackend:
    return OpenAIBackend("test-model", base_url=server.base_url, api_key_env=None, **{**FAST, **kwargs})


def test_answers_come_back_in_order_deduplicated_and_accounted():
    with FaultServer() as server:
        b = OpenAIBackend(
            "test-model",
            base_url=server.base_url,
            api_key_env=None,
            price_per_1m_prompt_tokens=2.0,
            price_per_1m_completion_tokens=10.0,
        )
        prompts = ["one two", "three", "one two", "four five six"]
        assert b.generate(prompts) == [f"echo: {p}" for p in prompts]
    assert len(server.requests) == 3  # the repeated prompt was sent once
    body = server.requests[0].body
    assert body["temperature"] == 0 and body["max_tokens"] == 16 and body["model"] == "test-model"
    assert body["messages"] == [{"role": "user", "content": "one two"}]
    assert b.num_calls == 3
    # the fault server reports prompt_tokens = words in the prompt, completion_tokens = 2
    assert b.usage_snapshot() == {
        "calls": 3.0,
        "prompt_tokens": 6.0,
        "completion_tokens": 6.0,
        "cost_usd": pytest.approx((6 * 2.0 + 6 * 10.0) / 1e6),
        "retries": 0.0,
        "failed_prompts": 0.0,
    }


def test_no_cost_estimate_without_prices():
    with FaultServer() as server:
        b = backend(server)
        b.generate(["a"])
    assert "cost_usd" not in b.usage_snapshot()


@pytest.mark.parametrize("failure", ["500", "429:0", "drop"])
def test_transient_failures_are_retried_until_an_answer(failure):
    with FaultServer(script=[failure, failure]) as server:
        b = backend(server, max_retries=3)
        assert b.generate(["hello"]) == ["echo: hello"]
    assert len(server.requests) == 3 and b.retries == 2


def test_retry_after_is_honoured():
    with FaultServer(script=["429:0.6"]) as server:
        b = backend(server, max_retries=2)
        start = time.monotonic()
        assert b.generate(["hello"]) == ["echo: hello"]
        waited = time.monotonic() - start
    assert len(server.requests) == 2
    assert waited >= 0.6  # the exponential backoff alone would have waited about 0.01 s


def test_a_client_error_is_not_retried_and_names_endpoint_and_cause():
    with FaultServer(default="400") as server:
        b = backend(server, max_retries=5)
        with pytest.raises(TaskBackendError) as info:
            b.generate(["hello"])
    assert len(server.requests) == 1
    message = str(info.value)
    assert f"{server.base_url}/chat/completions" in message
    assert "HTTP 400" in message and "unknown field 'foo'" in message


def test_the_last_retry_fails_with_endpoint_status_and_body():
    with FaultServer(default="500") as server:
        b = backend(server, max_retries=2)
        with pytest.raises(TaskBackendError) as info:
            b.generate(["hello"])
    assert len(server.requests) == 3  # the first attempt and two retries
    message = str(info.value)
    assert f"POST {server.base_url}/chat/completions failed after 3 attempts" in message
    assert "HTTP 500: model worker crashed" in message


def test_an_outage_is_waited_out_up_to_the_patience_then_named_with_the_answers_that_arrived(tmp_path, caplog):
    with FaultServer(script=["ok"], default="500") as server:  # the server goes down after one answer
        b = backend(server, max_concurrency=1, outage_patience_s=0.5, backoff_max_s=0.1)
        cached = CachedBackend(b, ResponseCache(tmp_path / "cache.sqlite"))
        start = time.monotonic()
        with pytest.raises(TaskModelUnavailable) as info:
            cached.generate(["first", "second", "first"])
        waited = time.monotonic() - start
        assert 0.5 <= waited < 3 and b.retries >= 3  # retried through the patience, not beyond it
        message = str(info.value)
        assert f"POST {server.base_url}/chat/completions failed after" in message
        assert "HTTP 500: model worker crashed" in message and "outage_patience_s=0.5" in message
        assert info.value.answered == {0: "echo: first", 2: "echo: first"}  # by position, the repeat too
        assert "for up to" in caplog.text  # what it waits for is logged

        server.default = "ok"  # back up: the answer that arrived before the outage is not asked again
        asked = len(server.requests)
        assert cached.generate(["first", "second"]) == ["echo: first", "echo: second"]
        assert [r.body["messages"][0]["content"] for r in server.requests[asked:]] == ["second"]


def test_a_prompt_refused_on_its_own_scores_empty_is_counted_and_never_cached(tmp_path):
    with FaultServer(script=["ok", "400", "ok"]) as server:  # e.g. the middle prompt is too long
        b = backend(server, max_concurrency=1)
        cached = CachedBackend(b, ResponseCache(tmp_path / "cache.sqlite"))
        answers = cached.generate(["a", "too long", "c"])
        assert answers == ["echo: a", "", "echo: c"] and isinstance(answers[1], FailedAnswer)
        assert b.usage_snapshot()["failed_prompts"] == 1.0
        assert cached.generate(["a", "too long"]) == ["echo: a", "echo: too long"]  # asked again, answered now
    assert len(server.requests) == 4


def test_a_hanging_server_times_out_each_attempt():
    with FaultServer(default="hang:20") as server:
        b = backend(server, timeout_s=0.3, max_retries=1)
        start = time.monotonic()
        with pytest.raises(TaskBackendError, match=r"after 2 attempts: no complete answer within timeout_s=0\.3"):
            b.generate(["hello"])
        elapsed = time.monotonic() - start
    assert len(server.requests) == 2
    assert elapsed < 3  # two 0.3 s timeouts and a short backoff, not the server's 20 s


def test_a_refused_connection_names_the_endpoint_and_the_exception():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=None, max_retries=1, **FAST)
    with pytest.raises(TaskBackendError) as info:
        b.generate(["hello"])
    message = str(info.value)
    assert f"POST http://127.0.0.1:{port}/v1/chat/completions failed after 2 attempts" in message
    assert "ClientConnectorError" in message


def test_concurrency_never_exceeds_max_concurrency():
    with FaultServer(default="slow:0.2") as server:
        b = backend(server, max_concurrency=3)
        start = time.monotonic()
        answers = b.generate([f"prompt {i}" for i in range(12)])
        elapsed = time.monotonic() - start
    assert answers == [f"echo: prompt {i}" for i in range(12)]
    assert server.peak_in_flight == 3  # used in full, never exceeded
    assert 0.8 <= elapsed < 3  # 12 requests of 0.2 s, 3 at a time


def test_api_key_reaches_the_server_but_no_log_repr_or_error(monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("PREWRITE_TEST_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FaultServer(script=["500", "ok", "echo-auth-400"]) as server:
        b = OpenAIBackend(
            "m", base_url=server.base_url, api_key_env="PREWRITE_TEST_API_KEY", max_retries=1, send_api_key=True, **FAST
        )
        assert b.generate(["hello"]) == ["echo: hello"]  # after one logged retry
        with pytest.raises(TaskBackendError) as info:
            b.generate(["again"])  # a 400 whose body repeats the Authorization header
    assert [r.authorization for r in server.requests] == [f"Bearer {secret}"] * 3
    assert "retrying" in caplog.text  # the retry was logged ...
    assert secret not in caplog.text  # ... without the key
    assert all(secret not in str(r.args) for r in caplog.records)
    assert secret not in repr(b) and "PREWRITE_TEST_API_KEY" in repr(b)
    assert secret not in str(info.value) and "rejected header Bearer ***" in str(info.value)
    assert "is $PREWRITE_TEST_API_KEY set?" not in str(info.value)  # 400, not 401


def test_no_authorization_header_without_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultServer() as server:
        OpenAIBackend("m", base_url=server.base_url, **FAST).generate(["hello"])
    assert server.requests[0].authorization is None


def test_generate_works_from_a_thread_and_inside_a_running_event_loop():
    with FaultServer() as server:
        b = backend(server)
        results = {}
        worker = threading.Thread(target=lambda: results.update(thread=b.generate(["t"])))
        worker.start()
        worker.join(30)

        async def caller():  # e.g. a notebook cell: the calling thread already runs a loop
            return b.generate(["loop"])

        results["loop"] = asyncio.run(caller())
    assert results == {"thread": ["echo: t"], "loop": ["echo: loop"]}


def test_loglikelihood_says_which_reward_needs_it_and_what_to_use():
    b = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env=None)
    with pytest.raises(NotImplementedError, match=r"`perplexity` reward.*task_backend=hf"):
        b.loglikelihood(["p"], ["c"])


def test_empty_input_sends_nothing():
    assert OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env=None).generate([]) == []
