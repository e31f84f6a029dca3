"""Contextual calibration of constrained answers (`task_backend.content_free_inputs`): the scorer reads the
label whose score rises most above its probability on content-free inputs under the same instruction."""

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prewrite.backends import build_backend
from prewrite.backends.base import TaskBackend
from prewrite.backends.cache import CachedBackend, ResponseCache
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

CONF = Path(__file__).resolve().parents[1] / "conf"
CONTENT_FREE = ["N/A", "", "[MASK]"]
# An instruction that names a label: uncalibrated, the task model answers it on almost every row.
NAMES_POSITIVE = "The sentiment I'm classifying is positive."


def load(name: str):
    return load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / f"{name}.yaml")))


def hf_config(content_free_inputs, constrained="auto"):
    cfg = OmegaConf.load(CONF / "task_backend" / "hf.yaml")
    cfg.max_new_tokens, cfg.constrained, cfg.content_free_inputs = 4, constrained, content_free_inputs
    return cfg


class ScriptedLabels(TaskBackend):
    """Label scores looked up by the input's text in the prompt: the arithmetic is the point, not a model."""

    def __init__(self, scores: dict[str, list[float]]):
        super().__init__()
        self.scores, self.content_free_inputs, self.asked = scores, ("N/A",), []

    def label_scores(self, prompts):
        self.asked.extend(prompts)
        return [next(s for text, s in self.scores.items() if p.endswith(f"Sentence: {text}\nAnswer:")) for p in prompts]

    def generate(self, prompts):
        raise AssertionError("a calibrated scorer reads label scores, not generated answers")

    def cache_identity(self):
        return {"model": "scripted"}


def test_the_answer_is_the_label_that_rises_most_above_the_content_free_prior():
    task = load("sst2_sentences")
    assert task.template.endswith("Sentence: {sentence}\nAnswer:")  # what ScriptedLabels reads the input from
    # The content-free input gets p(positive) = 0.8: an input at 0.7 is below that prior, so it reads negative.
    backend = ScriptedLabels(
        {"N/A": [math.log(0.2), math.log(0.8)], "fine": [math.log(0.3), math.log(0.7)], "great": [-5.0, -0.01]}
    )
    scorer = RewriteScorer(task, backend, ["accuracy"], [1.0])
    rows = [{"sentence": "fine", "label": 0}, {"sentence": "great", "label": 1}]
    scores = scorer(["Classify.", "Say positive."], rows)
    assert scores.answers == [["negative", "positive"], ["negative", "positive"]]
    assert scores.rewards == [1.0, 1.0]
    # one content-free prompt per distinct instruction, counted in the budget like any other request
    assert scorer.requests == 2 * 2 + 2
    assert sum(p.endswith("Sentence: N/A\nAnswer:") for p in backend.asked) == 2


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_calibration_on_the_embedded_model_matches_a_brute_force_reading_and_undoes_a_named_label(tmp_path):
    task = load("sst2_sentences")
    rows = task.splits["dev"][:16]
    plain = RewriteScorer(task, build_backend(hf_config([]), None, task), ["accuracy"], [1.0])
    cache = {"enabled": True, "path": str(tmp_path / "c.sqlite")}
    backend = build_backend(hf_config(CONTENT_FREE), cache, task)
    calibrated = RewriteScorer(task, backend, ["accuracy"], [1.0])
    instructions = [task.instruction, NAMES_POSITIVE]
    before, after = plain(instructions, rows), calibrated(instructions, rows)
    assert calibrated.requests == plain.requests + len(instructions) * len(CONTENT_FREE)
    assert backend.num_calls == calibrated.requests  # every prompt distinct, each run once

    # Brute force through the independent log-likelihood pass (the SST-2 verbalizers are one token each,
    # so a mean per token is the summed log-probability the constrained reading uses).
    labels = list(task.labels.values())
    for rw, answers in zip(instructions, after.answers, strict=True):
        empty = [task.prompt(rw, {"sentence": t}) for t in CONTENT_FREE]
        probs = [[math.exp(s) for s in backend.loglikelihood([p] * len(labels), labels)] for p in empty]
        prior = [math.log(sum(p[k] / sum(p) for p in probs) / len(probs)) for k in range(len(labels))]
        for row, answer in zip(rows, answers, strict=True):
            lls = backend.loglikelihood([task.prompt(rw, row)] * len(labels), labels)
            shifted = [ll - p for ll, p in zip(lls, prior, strict=True)]
            assert answer == labels[max(range(len(labels)), key=shifted.__getitem__)]

    # Naming a label moves the plain reading to that label; the calibrated one stays near its accuracy.
    share = [sum(a == "positive" for a in s.answers[1]) / len(rows) for s in (before, after)]
    assert share[0] > 0.9 and share[1] < 0.7, share
    assert after.rewards[1] > before.rewards[1] + 0.2, (before.rewards, after.rewards)
    # the label scores come from the response cache the second time
    hits = backend.hits
    calls = backend.num_calls
    assert calibrated(instructions, rows).answers == after.answers
    assert backend.hits == hits + calibrated.requests // 2 and backend.num_calls == calls


def test_calibration_is_refused_where_answers_are_decoded():
    with pytest.raises(ValueError, match=r"content_free_inputs=\['N/A'\] calibrates .*'sst2_sentences' are decoded"):
        build_backend(hf_config(["N/A"], constrained=False), None, load("sst2_sentences"))
    with pytest.raises(ValueError, match="content_free_inputs=.*'gsm8k' are decoded"):
        build_backend(hf_config(["N/A"]), None, load("gsm8k"))  # auto decodes math


def test_a_cached_backend_serves_label_scores_and_forwards_the_calibration(tmp_path):
    inner = ScriptedLabels({"a": [0.0, -1.0]})
    cached = CachedBackend(inner, ResponseCache(tmp_path / "c.sqlite"))
    prompt = "x\nSentence: a\nAnswer:"
    assert cached.label_scores([prompt, prompt]) == [[0.0, -1.0]] * 2
    assert cached.label_scores([prompt]) == [[0.0, -1.0]] and inner.asked == [prompt]
    assert cached.content_free_inputs == ("N/A",)
