"""Settings that only a GPU machine exercises reach vLLM's engine as configured (a recording stand-in for
`vllm.LLM`: this project's machines have one CPU device, where tensor parallelism cannot run)."""

from types import SimpleNamespace
from unittest import mock

from hydra.utils import instantiate

from prewrite import model_zoo
from prewrite.backends import build_backend


def recording_vllm(monkeypatch):
    engines = []

    def llm(**kwargs):
        engines.append(kwargs)
        return mock.MagicMock()

    fake = SimpleNamespace(LLM=llm, SamplingParams=mock.MagicMock(), inputs=SimpleNamespace(TokensPrompt=dict))
    monkeypatch.setattr(model_zoo, "import_vllm", lambda option: fake)
    return engines


def test_tensor_parallel_size_reaches_the_task_models_and_the_rollouts_engine(compose_train, monkeypatch):
    engines = recording_vllm(monkeypatch)
    cfg = compose_train("task_backend=vllm", "task_backend.tensor_parallel_size=2", "rollout=vllm",
                        "rollout.tensor_parallel_size=4")  # fmt: skip
    build_backend(cfg.task_backend, None, task=None)  # as a run builds it (no task: nothing to choose among)
    policy = SimpleNamespace(name_or_path="folder", device=SimpleNamespace(type="cuda"))
    rollout = instantiate(cfg.rollout, policy=policy, tokenizer=None)
    assert [e["tensor_parallel_size"] for e in engines] == [2, 4]
    assert rollout.tensor_parallel_size == 4
