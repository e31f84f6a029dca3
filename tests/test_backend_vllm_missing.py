"""task_backend=vllm without vLLM installed: a clear error that says how to install it."""

import sys

import pytest

from prewrite.backends.vllm import VLLMBackend


def test_a_missing_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, installed or not
    with pytest.raises(ImportError, match=r"task_backend=vllm needs the vllm package.*`make setup-vllm`"):
        VLLMBackend("embedded:smollm2-135m-instruct")
