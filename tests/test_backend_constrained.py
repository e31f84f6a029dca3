"""hf constrained mode: a classification answer chosen among the label verbalizers by log-likelihood."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prewrite.backends import build_backend
from prewrite.backends.cache import CachedBackend, ResponseCache
from prewrite.backends.hf import HFBackend
from prewrite.tasks import load_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CONF = Path(__file__).resolve().parents[1] / "conf"
MODEL = "embedded:smollm2-135m-instruct"
# Single-token verbalizers, two multi-token ones sharing their first token, and one sharing a prefix
# with nothing: every grouping path of the scoring code.
CHOICES = ["positive", "negative", "very positive", "very negative", "neutral sentiment"]


def load(name: str):
    return load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / f"{name}.yaml")))


@pytest.fixture(scope="module")
def sst2():
    return load("sst2")


@pytest.fixture(scope="module")
def prompts(sst2):
    return [sst2.prompt(sst2.instruction, row) for row in sst2.splits["test"][:12]]


@pytest.fixture(scope="module")
def constrained():
    # fp32: the brute-force check below compares sums of log-probs across differently padded batches.
    return HFBackend(MODEL, dtype="float32", batch_size=5, constrained=True, choices=CHOICES)


def test_the_answer_is_the_verbalizer_with_the_highest_summed_logprob(constrained, prompts):
    tokens = [constrained.tokenizer(c, add_special_tokens=False)["input_ids"] for c in CHOICES]
    assert len(tokens[2]) > 1 and tokens[2][0] == tokens[3][0]  # the cases this test is about are present
    answers = constrained.generate(prompts + prompts[:3])
    assert answers[-3:] == answers[:3]  # repeats answered once, in the caller's order
    assert constrained.num_calls == len(prompts)
    # Brute force: every (prompt, verbalizer) scored on its own by the independent loglikelihood pass.
    for prompt, answer in zip(prompts, answers, strict=False):
        means = constrained.loglikelihood([prompt] * len(CHOICES), CHOICES)
        sums = [m * len(t) for m, t in zip(means, tokens, strict=True)]
        best = max(range(len(CHOICES)), key=sums.__getitem__)
        assert answer == CHOICES[best], (prompt, dict(zip(CHOICES, sums, strict=True)))


def test_build_backend_gives_the_task_labels_and_parse_reads_every_answer(sst2, prompts, tmp_path):
    cfg = OmegaConf.load(CONF / "task_backend" / "hf.yaml")
    cfg.max_new_tokens, cfg.constrained = 8, True
    backend = build_backend(cfg, {"enabled": True, "path": str(tmp_path / "c.sqlite")}, sst2)
    assert backend.inner.choices == ["negative", "positive"]
    answers = backend.generate(prompts)
    assert set(answers) <= {"negative", "positive"}
    assert all(sst2.parse(a) in (0, 1) for a in answers)


def test_constrained_mode_is_refused_without_a_classification_task():
    cfg = OmegaConf.load(CONF / "task_backend" / "hf.yaml")
    cfg.max_new_tokens, cfg.constrained = 8, True
    with pytest.raises(ValueError, match="constrained=true chooses among a classification task's labels.*nq_open"):
        build_backend(cfg, None, load("nq_open"))
    with pytest.raises(ValueError, match="constrained=true needs the label verbalizers"):
        HFBackend(MODEL, constrained=True)


def test_the_cache_key_follows_the_mode_and_the_choices(constrained, tmp_path):
    cache = ResponseCache(tmp_path / "k.sqlite")
    greedy = HFBackend(MODEL, dtype="float32")
    other = HFBackend(MODEL, dtype="float32", constrained=True, choices=CHOICES[:2])
    keys = {CachedBackend(b, cache).key("generate", "p") for b in (greedy, constrained, other)}
    assert len(keys) == 3
