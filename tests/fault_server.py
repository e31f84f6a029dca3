"""A local chat-completions server that misbehaves on request, for testing the OpenAI-compatible backend.

It runs an aiohttp app on 127.0.0.1 (an ephemeral port) in a background thread and stops itself
after `lifetime_s` even if a test forgets to. Each request takes the next action of `script` (then
`default`):

- `ok`: answer `echo: <prompt>` with a `usage` field;
- `slow:<s>`: answer after s seconds;
- `500`, `400`: that status with a short body;
- `429:<s>`: 429 with `Retry-After: <s>`;
- `hang:<s>`: say nothing for s seconds, then answer (past the client's timeout);
- `drop`: close the connection without answering;
- `echo-auth-400`: 400 whose body repeats the request's Authorization header (a leaky proxy).

It records every request (`requests`, with headers and body) and the peak number in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Seen:
    authorization: str | None
    body: dict


class FaultServer:
    def __init__(self, script=(), default: str = "ok", lifetime_s: float = 60.0):
        self.script = deque(script)
        self.default = default
        self.lifetime_s = lifetime_s
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.port: int | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start within 10 s")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        # Hanging handlers are cancelled at shutdown rather than waited for.
        runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        loop.call_later(self.lifetime_s, self._stop.set)  # bounded even if __exit__ never runs
        self._ready.set()
        try:
            loop.run_until_complete(self._stop.wait())
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            body = await request.json()
            self.requests.append(Seen(request.headers.get("Authorization"), body))
            action = self.script.popleft() if self.script else self.default
            kind, _, arg = action.partition(":")
            if kind == "500":
                return web.Response(status=500, text="model worker crashed")
            if kind == "400":
                return web.json_response({"error": {"message": "unknown field 'foo'"}}, status=400)
            if kind == "echo-auth-400":
                return web.Response(status=400, text=f"rejected header {request.headers.get('Authorization')}")
            if kind == "429":
                return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": arg})
            if kind in ("slow", "hang"):
                await asyncio.sleep(float(arg))
            if kind == "drop":
                request.transport.close()
                raise asyncio.CancelledError  # nothing more to send on a closed connection
            prompt = body["messages"][0]["content"]
            return web.json_response(
                {
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"echo: {prompt}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 2},
                }
            )
        finally:
            self.in_flight -= 1
