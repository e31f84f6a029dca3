"""Metrics with TRL's reward-function calling convention.

`prompts` are the task prompts, `completions` the task LLM's answers (one per rewrite x example), and
keyword arguments carry the dataset columns of the examples plus `task`, `gold` (the task's gold
answer per example) and `rewrite` (the rewritten instruction the answer was given under). Each
returns one float per completion, or None where the value cannot be computed (left out of the mean
and counted, never a silent 0). A wrong or unparseable answer is a computable 0.0.

Attributes read by the scorer:
- `per_rewrite = True`: the function scores a rewrite's whole sample at once and returns one value
  (macro-F1 needs every prediction of the sample).
- `needs`: what the function reads besides the dataset columns, a name or a tuple of names (default
  "generation": the generated `completions`). "loglikelihood": `loglikelihoods`, the task LLM's mean
  token log-probability of the gold answer as its reply. "label_loglikelihoods": per example, that of
  every label verbalizer of a classification task (in `task.labels` order).
- `kinds`: the task kinds the function is for (e.g. ("classification",)); the scorer refuses others.
"""

from __future__ import annotations

import logging
import math
import re
import string
import threading
from collections import Counter

from prewrite.backends.labels import label_softmax
from prewrite.tasks import Task

log = logging.getLogger(__name__)


# ---- text normalisation (SQuAD) ----
def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _aliases(gold) -> list[str]:
    return [str(g) for g in gold] if isinstance(gold, list | tuple) else [str(gold)]


# ---- math equivalence ----
def math_equal(prediction: str | None, gold: str) -> float | None:
    """math-verify equivalence of two final answers; None if math-verify itself fails."""
    if prediction is None or not prediction.strip():
        return 0.0
    from math_verify import parse, verify

    # math-verify's timeouts use signals, which only work in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        g = parse(f"${gold}$", parsing_timeout=timeout)
        p = parse(f"${prediction}$", parsing_timeout=timeout)
        if not g:
            return None  # the gold itself is unreadable: not the model's fault
        return float(bool(p) and verify(g, p, timeout_seconds=timeout))
    except Exception as e:  # one odd answer must never crash a step
        log.debug("math-verify failed on %r vs %r: %s", prediction, gold, e)
        return None


# ---- metrics ----
def exact_match(prompts, completions, task: Task, gold, **columns) -> list[float | None]:
    """Classification: parsed label == gold. QA and math: normalised string equal to a gold alias."""
    if task.kind == "classification":
        return [float(task.parse(c) == g) for c, g in zip(completions, gold, strict=True)]
    out = []
    for c, g in zip(completions, gold, strict=True):
        pred = task.parse(c)
        out.append(
            0.0 if pred is None else float(any(normalize_answer(pred) == normalize_answer(a) for a in _aliases(g)))
        )
    return out


def math_verify(prompts, completions, task: Task, gold, **columns) -> list[float | None]:
    """1.0 where the extracted answer is mathematically equal to the gold (math-verify; for QA, to
    any alias). Labels have no mathematical form: on classification this is exact_match."""
    if task.kind == "classification":
        return exact_match(prompts, completions, task, gold, **columns)
    out = []
    for c, g in zip(completions, gold, strict=True):
        pred = task.parse(c)
        values = [v for v in (math_equal(pred, a) for a in _aliases(g)) if v is not None]
        out.append(max(values) if values else None)
    return out


def accuracy(prompts, completions, task: Task, gold, **columns) -> list[float | None]:
    """The task's notion of a correct answer: math-verify equivalence for math, exact match otherwise."""
    if task.kind == "math":
        return math_verify(prompts, completions, task, gold, **columns)
    return exact_match(prompts, completions, task, gold, **columns)


def f1(prompts, completions, task: Task, gold, **columns) -> list[float | None]:
    """Token F1 (SQuAD normalisation, max over gold aliases) for QA and math answers."""
    out = []
    for c, g in zip(completions, gold, strict=True):
        pred = task.parse(c)
        out.append(0.0 if pred is None else max(token_f1(pred, a) for a in _aliases(g)))
    return out


def macro_f1(prompts, completions, task: Task, gold, **columns) -> list[float | None]:
    """Macro-F1 over the labels present in the gold or the predictions of this sample; an
    unparseable answer counts as a wrong prediction."""
    preds = [task.parse(c) for c in completions]
    labels = {g for g in gold} | {p for p in preds if p is not None}
    scores = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(preds, gold, strict=True))
        fp = sum(p == label and g != label for p, g in zip(preds, gold, strict=True))
        fn = sum(p != label and g == label for p, g in zip(preds, gold, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return [sum(scores) / len(scores)]


macro_f1.per_rewrite = True

# `reward=f1` means token F1 for QA and math, and macro-F1 for classification.
BY_KIND = {("f1", "classification"): macro_f1}


def perplexity(prompts, completions, task: Task, gold, loglikelihoods, **columns) -> list[float | None]:
    """exp(mean log-probability per token) of the gold answer given the task prompt: 1 / perplexity,
    in (0, 1], higher is better. Needs no generation."""
    return [None if ll is None else math.exp(ll) for ll in loglikelihoods]


perplexity.needs = "loglikelihood"


def _label_scores(task: Task, gold, label_loglikelihoods):
    """(index of the gold label, the labels' log-likelihoods) per example; None where one is missing."""
    order = list(task.labels)
    for g, lls in zip(gold, label_loglikelihoods, strict=True):
        yield (order.index(g), lls) if all(v is not None for v in lls) else (None, None)


def label_prob(prompts, completions, task: Task, gold, label_loglikelihoods, **columns) -> list[float | None]:
    """Dense classification reward: the probability the task LLM gives the gold label, normalised over the
    task's labels (a softmax of their log-likelihoods as the reply's start). One scoring pass, no decoding;
    its argmax is the constrained backend's answer, so it is the smooth version of constrained accuracy."""
    out = []
    for i, lls in _label_scores(task, gold, label_loglikelihoods):
        if i is None:
            out.append(None)
            continue
        out.append(label_softmax(lls)[i])
    return out


def label_margin(prompts, completions, task: Task, gold, label_loglikelihoods, **columns) -> list[float | None]:
    """Dense classification reward: log-likelihood of the gold label minus the best other label's, clipped
    to [-MARGIN_CLIP, MARGIN_CLIP] so one confident example cannot outweigh the rest of the sample."""
    out = []
    for i, lls in _label_scores(task, gold, label_loglikelihoods):
        if i is None:
            out.append(None)
            continue
        margin = lls[i] - max(v for j, v in enumerate(lls) if j != i)
        out.append(max(-MARGIN_CLIP, min(MARGIN_CLIP, margin)))
    return out


MARGIN_CLIP = 5.0
for _f in (label_prob, label_margin):
    _f.needs, _f.kinds = "label_loglikelihoods", ("classification",)


def template(prompts, completions, task: Task, rewrite, **columns) -> list[float | None]:
    """-1 where the rewrite dropped an input placeholder (`{question}`...) that the initial instruction
    carried, else 0: a penalty to add to a task metric (conf/reward/template.yaml)."""
    required = task.required_placeholders
    return [-1.0 if any(p not in rw for p in required) else 0.0 for rw in rewrite]
