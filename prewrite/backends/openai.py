"""Task LLM behind any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, hosted APIs).

Requests run concurrently on an asyncio client (at most `max_concurrency` in flight), each with its
own timeout. Connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
jitter (a server's Retry-After is honoured) until `max_retries` or `outage_patience_s` runs out: an
outage of a few minutes is waited out, a longer one raises TaskModelUnavailable with the answers that
did arrive. A prompt the server refuses on its own (400, 413, 422: too long for the context, a content
filter) gets a FailedAnswer, counted in `failed_prompts`; when it refuses every prompt of a call the
request itself is wrong, and that fails at once, as do 401, 403, 404 and other 4xx.
The API key comes from an environment variable and is kept out of configs, logs, reprs and error
messages; it is sent only to the hosts it is meant for (`key_hosts`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import os
import random
import time
from urllib.parse import urlsplit

import aiohttp

from prewrite.backends.base import FailedAnswer, TaskBackend, TaskBackendError, TaskModelUnavailable

log = logging.getLogger(__name__)

_BODY_EXCERPT = 300  # characters of an error body quoted in an exception
# The host each well-known key variable belongs to: by default a key is sent there only, so pointing
# base_url at a local or third-party server never hands it the user's provider key.
PROVIDER_HOSTS = {
    "OPENAI_API_KEY": "api.openai.com",
    "OPENROUTER_API_KEY": "openrouter.ai",
    "TOGETHER_API_KEY": "api.together.xyz",
    "GROQ_API_KEY": "api.groq.com",
    "MISTRAL_API_KEY": "api.mistral.ai",
    "DEEPSEEK_API_KEY": "api.deepseek.com",
    "FIREWORKS_API_KEY": "api.fireworks.ai",
}


def key_hosts(api_key_env: str | None, api_key_hosts: list[str] | None) -> set[str]:
    """Hosts the key may go to: `api_key_hosts` if given, else the provider host of `api_key_env`."""
    if api_key_hosts is not None:
        return {h.lower() for h in api_key_hosts}
    return {PROVIDER_HOSTS[api_key_env]} if api_key_env in PROVIDER_HOSTS else set()


class _Refused(Exception):
    """The server refused this one prompt (400, 413, 422); other prompts may still be answered."""


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; `cause` says how, `wait_s` is the server's hint."""

    def __init__(self, cause: str, wait_s: float | None = None):
        super().__init__(cause)
        self.cause = cause
        self.wait_s = wait_s


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIBackend(TaskBackend):
    """Answers user messages with a model served behind `{base_url}/chat/completions`, greedily."""

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        timeout_s: float = 60.0,
        max_retries: int | None = None,
        outage_patience_s: float = 600.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_new_tokens: int = 16,
        price_per_1m_prompt_tokens: float | None = None,
        price_per_1m_completion_tokens: float | None = None,
        api_key_hosts: list[str] | None = None,
        send_api_key: bool = False,
    ):
        if max_concurrency < 1:
            raise ValueError(f"task_backend.max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"task_backend.max_retries must be >= 0 or null, got {max_retries}")
        if outage_patience_s < 0:
            raise ValueError(f"task_backend.outage_patience_s must be >= 0, got {outage_patience_s}")
        super().__init__(price_per_1m_prompt_tokens, price_per_1m_completion_tokens)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        # Read once, kept private; a local server needs none, so a missing variable is not an error.
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        host = (urlsplit(self.base_url).hostname or "").lower()
        allowed = send_api_key or host in key_hosts(api_key_env, api_key_hosts)
        if self._api_key and not allowed:
            log.warning(
                "$%s is set but not sent to %s (not an allowed host: task_backend.api_key_hosts, or "
                "task_backend.send_api_key=true to send it anyway)", api_key_env, host,
            )  # fmt: skip
            self._api_key = None
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.outage_patience_s = outage_patience_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_new_tokens = max_new_tokens
        self.retries = 0  # attempts that failed and were tried again
        self.failed_prompts = 0  # prompts the server refused on their own (FailedAnswer)
        self._last_wait_log = 0.0  # an outage is logged every few seconds, not once per prompt in flight

    def __repr__(self) -> str:
        key = f"${self.api_key_env} sent" if self._api_key else "no key"
        return f"OpenAIBackend(model={self.model!r}, url={self.url!r}, {key})"

    def cache_identity(self) -> dict:
        """What decides an answer: the served model and where it is served (two servers may serve
        different weights under one name), and every request parameter that changes the answer."""
        return {
            "backend": "openai-chat",
            "model": self.model,
            "base_url": self.base_url,
            "temperature": 0.0,
            "max_tokens": self.max_new_tokens,
        }

    def usage_snapshot(self) -> dict[str, float]:
        return {**self.usage.snapshot(), "retries": float(self.retries), "failed_prompts": float(self.failed_prompts)}

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float | None]:
        raise NotImplementedError(
            f"OpenAIBackend ({self.url}) cannot score log-likelihoods: the chat-completions endpoint returns no "
            "log-probabilities of a given answer. The `perplexity` reward (reward=perplexity or f1_perplexity) "
            "needs them; use task_backend=hf for it."
        )

    def generate(self, prompts: list[str]) -> list[str]:
        """Synchronous for callers: runs its own event loop (in a helper thread if the calling thread
        already runs one, e.g. inside a notebook)."""
        unique = list(dict.fromkeys(prompts))
        if not unique:
            return []
        try:
            answers = self._run(self._generate_all(unique))
        except TaskBackendError as e:  # what arrived, by position in `prompts` (repeats included)
            position = {p: i for i, p in enumerate(unique)}
            e.answered = {i: e.answered[position[p]] for i, p in enumerate(prompts) if position[p] in e.answered}
            raise
        if all(isinstance(a, FailedAnswer) for a in answers):
            raise TaskBackendError(f"{answers[0].reason} (every prompt of the call was refused: the request is wrong)")
        for p, a in zip(unique, answers, strict=True):
            if isinstance(a, FailedAnswer):
                self.failed_prompts += 1
                log.warning("The task model refused a prompt; it scores as an empty answer (%s): %.80s", a.reason, p)
        by_prompt = dict(zip(unique, answers, strict=True))
        return [by_prompt[p] for p in prompts]

    @staticmethod
    def _run(coroutine):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coroutine)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coroutine).result()

    async def _generate_all(self, prompts: list[str]) -> list[str]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limit = asyncio.Semaphore(self.max_concurrency)
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            tasks = [asyncio.ensure_future(self._generate_one(session, limit, p)) for p in prompts]
            try:
                return await asyncio.gather(*tasks)
            except BaseException as e:
                # One prompt failed for good: the step cannot be scored, so stop the others now, and
                # hand back what did arrive (a cache keeps it: a re-launch need not ask again).
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if isinstance(e, TaskBackendError):
                    e.answered = {i: t.result() for i, t in enumerate(tasks) if t.done() and not t.cancelled()
                                  and t.exception() is None}  # fmt: skip
                raise

    async def _generate_one(self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.max_new_tokens,
            "n": 1,
        }
        first_failure = None
        attempt = 0
        while True:
            attempt += 1
            try:
                async with limit:  # the slot is held only while a request is in flight, not while backing off
                    data = await self._post(session, body)
                return self._read_answer(data)
            except _Refused as e:
                return FailedAnswer(str(e))
            except _Retryable as e:
                now = time.monotonic()
                first_failure = first_failure or now
                left_s = self.outage_patience_s - (now - first_failure)
                if self.max_retries is not None and attempt > self.max_retries:
                    raise TaskBackendError(
                        f"POST {self.url} failed after {attempt} attempts: {e.cause} "
                        f"(task_backend.max_retries={self.max_retries})"
                    ) from None
                if left_s <= 0:
                    raise TaskModelUnavailable(
                        f"POST {self.url} failed after {attempt} attempts: {e.cause} (no answer for "
                        f"{now - first_failure:.0f} s, task_backend.outage_patience_s={self.outage_patience_s:g})"
                    ) from None
                self.retries += 1
                backoff = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                # Retry-After is honoured, but capped at backoff_max_s so one hint cannot stall a run for hours.
                delay = min(self.backoff_max_s, e.wait_s) if e.wait_s is not None else backoff
                delay = min(delay, left_s)
                if attempt == 1 or now - self._last_wait_log >= 10:
                    self._last_wait_log = now
                    log.warning(
                        "POST %s attempt %d failed (%s); retrying in %.2f s, for up to %.0f s more "
                        "(task_backend.outage_patience_s)", self.url, attempt, e.cause, delay, left_s,
                    )  # fmt: skip
                await asyncio.sleep(delay)

    async def _post(self, session: aiohttp.ClientSession, body: dict) -> dict:
        try:
            async with session.post(
                self.url, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as response:
                text = await response.text()
                if response.status == 200:
                    try:
                        return json.loads(text)
                    except ValueError as e:
                        raise TaskBackendError(
                            f"POST {self.url}: HTTP 200 but the body is not JSON ({e}): {self._excerpt(text)}"
                        ) from None
                cause = f"HTTP {response.status}: {self._excerpt(text)}"
                if response.status == 429 or response.status >= 500:
                    raise _Retryable(cause, _retry_after_s(response.headers.get("Retry-After")))
                if response.status in (400, 413, 422):  # this prompt (too long, filtered) or all: see generate
                    raise _Refused(f"POST {self.url} failed: {cause}")
                hint = (
                    f" (is ${self.api_key_env} set, and is this host in task_backend.api_key_hosts?)"
                    if response.status in (401, 403) and self.api_key_env
                    else ""
                )
                raise TaskBackendError(f"POST {self.url} failed: {cause}{hint}")
        except asyncio.TimeoutError:
            raise _Retryable(f"no complete answer within timeout_s={self.timeout_s}") from None
        except aiohttp.ClientError as e:  # refused, reset, dropped mid-answer, DNS, ...
            raise _Retryable(f"{type(e).__name__}: {self._scrub(str(e))}") from None

    def _read_answer(self, data: dict) -> str:
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise TaskBackendError(
                f"POST {self.url}: expected a chat-completions answer with choices[0].message, got "
                f"{self._excerpt(str(data))}"
            ) from None
        usage = data.get("usage") or {}
        self.usage.add(
            calls=1,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
        return message.get("content") or ""  # null content (e.g. a refusal) is an empty answer

    def _scrub(self, text: str) -> str:
        # A misbehaving server or proxy may echo the request headers back: never let the key through.
        return text.replace(self._api_key, "***") if self._api_key else text

    def _excerpt(self, text: str) -> str:
        text = self._scrub(text).strip()
        return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."
