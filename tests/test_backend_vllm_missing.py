"""vLLM not installed: a clear error that names the option and says how to install it."""

import sys

import pytest

from prewrite.backends.vllm import VLLMBackend


def test_a_missing_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, installed or not
    with pytest.raises(ImportError, match=r"task_backend=vllm needs the vllm package.*`make setup-vllm`"):
        VLLMBackend("embedded:smollm2-135m-instruct")


def test_a_missing_vllm_names_the_rollout_option_too(monkeypatch):
    from prewrite.model_zoo import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"rollout=vllm needs the vllm package.*or use rollout=hf"):
        import_vllm("rollout")
