"""Scoring rewrites: one task-LLM pass over (rewrite x shared examples) feeds every metric.

Generation runs only if a metric with non-zero weight (or a reported metric) reads generated
answers; the log-likelihood pass only if one reads log-likelihoods. Weight-0 metrics are never run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from hydra.utils import get_method, instantiate

from prewrite.backends.base import TaskBackend
from prewrite.backends.labels import best_index, label_softmax
from prewrite.rewards import metrics
from prewrite.tasks import Task

RewardFunc = Callable[..., list]


def resolve_reward_func(spec: str | Mapping, task: Task) -> tuple[str, RewardFunc]:
    """(name for logs, function) of one `reward_funcs` entry: a metric of prewrite.rewards.metrics by
    name (chosen per task kind where a name means different things, e.g. f1), a dotted path to a
    TRL-style reward function, or a mapping with `_target_` that Hydra instantiates into one (a
    factory, or `_partial_: true` to bind arguments); its `name` key, if any, names it in the logs."""
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None) or str(spec.get("_target_", "?")).rsplit(".", 1)[-1]
        func = instantiate(spec)
        if not callable(func):
            raise ValueError(f"reward_funcs entry {spec} instantiated to {type(func).__name__}, not a function")
        return name, func
    func = metrics.BY_KIND.get((spec, task.kind)) or getattr(metrics, spec, None)
    if callable(func):
        return spec, func
    try:
        return spec.rsplit(".", 1)[-1], get_method(spec)
    except Exception as e:
        raise ValueError(
            f"Unknown reward function {spec!r}: not a metric in prewrite.rewards.metrics and not an importable "
            f"dotted path ({e})"
        ) from None


@dataclass
class Scores:
    rewards: list[float | None]  # one per rewrite; None where a weighted metric could not be computed
    metrics: dict[str, list[float | None]]  # metric name -> per-rewrite value (mean over the examples)
    answers: list[list[str]]  # task-LLM answers, [rewrite][example] ("" when nothing was generated)
    none_values: int  # per-example metric values that could not be computed (left out of the means)
    # metric name -> [rewrite][example] values; None for a metric defined only over a whole sample (macro-F1)
    per_example: dict[str, list[list[float | None]] | None] = field(default_factory=dict)
    # per rewrite: the standard error of its reward as a mean over this sample of examples (the noise a
    # group's reward differences must rise above); None where a weighted metric has no per-example values
    reward_se: list[float | None] = field(default_factory=list)


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _mean(values: Sequence[float | None]) -> float | None:
    valid = [v for v in values if v is not None and not math.isnan(v)]
    return sum(valid) / len(valid) if valid else None


def gold_text(task: Task, gold) -> str:
    """The gold answer as text: what the perplexity metric scores the likelihood of."""
    if task.kind == "classification":
        return task.labels[gold]
    return str(gold[0]) if isinstance(gold, list | tuple) else str(gold)


class RewriteScorer:
    def __init__(
        self,
        task: Task,
        backend: TaskBackend,
        reward_funcs: Sequence[str],
        reward_weights: Sequence[float] | None,
        report: Sequence[str] = (),
    ):
        weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
        if len(weights) != len(reward_funcs):
            raise ValueError(
                f"reward_weights has {len(weights)} entries but reward_funcs has {len(reward_funcs)}: "
                f"{list(reward_funcs)}"
            )
        self.task = task
        self.backend = backend
        # Prompts asked of the task LLM, cache hits and repeats included: the budget that methods are
        # compared at (prewrite.compare), which must not depend on what a cache happened to hold.
        self.requests = 0
        # A weight-0 function is never computed.
        self.weighted = [(*resolve_reward_func(f, task), w) for f, w in zip(reward_funcs, weights, strict=True) if w]
        for name, func, _ in self.weighted:
            kinds = getattr(func, "kinds", None)
            if kinds and task.kind not in kinds:
                raise ValueError(
                    f"reward function {name!r} is for {', '.join(kinds)} tasks; task {task.name!r} is {task.kind} "
                    "(for qa and math, `perplexity` scores the gold answer's likelihood)"
                )
        if not self.weighted:
            raise ValueError(f"every reward weight is 0 ({list(reward_funcs)}, {weights}): nothing to optimize")
        names = {n for n, _, _ in self.weighted}
        # Reported metrics (e.g. the task's own metric on dev) are computed but never weighted.
        self.reported = [r for r in (resolve_reward_func(f, task) for f in report) if r[0] not in names]

    @property
    def metric_names(self) -> list[str]:
        return [n for n, _, _ in self.weighted] + [n for n, _ in self.reported]

    def __call__(self, rewrites: Sequence[str], rows: Sequence[dict]) -> Scores:
        """Every rewrite on the same rows (a task-level instruction): one score per rewrite."""
        return self.score_groups([[(rw, row) for row in rows] for rw in rewrites])

    def score_groups(self, groups: Sequence[Sequence[tuple[str, dict]]]) -> Scores:
        """One score per group of (instruction, row) pairs, the mean over its pairs: a task-level rewrite
        on shared rows, or per-input rewrites each on its own row (a group of one in training; all of a
        split's rows in one group on dev, so a metric over a whole sample such as macro-F1 still reads it)."""
        pairs = [pair for group in groups for pair in group]
        bounds = [0]
        for group in groups:
            bounds.append(bounds[-1] + len(group))
        chunks = [slice(bounds[i], bounds[i + 1]) for i in range(len(groups))]
        funcs = [(n_, f) for n_, f, _ in self.weighted] + self.reported
        needs = {n for _, f in funcs for n in _as_tuple(getattr(f, "needs", "generation"))}
        rows = [row for _, row in pairs]
        prompts = [self.task.prompt(rw, row) for rw, row in pairs]
        self.requests += len(prompts)
        gold = [self.task.gold(row) for row in rows]
        rewrite = [rw for rw, _ in pairs]
        columns = {k: [row[k] for row in rows] for k in rows[0]}
        if "generation" not in needs:
            answers = [""] * len(prompts)
        elif self.backend.content_free_inputs:
            answers = self._calibrated_answers(rewrite, prompts)
        else:
            answers = self.backend.generate(prompts)
        if "loglikelihood" in needs:
            columns["loglikelihoods"] = self.backend.loglikelihood(prompts, [gold_text(self.task, g) for g in gold])
        if "label_loglikelihoods" in needs:
            labels = list(self.task.labels.values())
            lls = self.backend.loglikelihood([p for p in prompts for _ in labels], labels * len(prompts))
            columns["label_loglikelihoods"] = [lls[i : i + len(labels)] for i in range(0, len(lls), len(labels))]

        per_metric: dict[str, list[float | None]] = {}
        per_example: dict[str, list[list[float | None]] | None] = {}
        none_values = 0
        for name, func in funcs:
            kwargs = dict(prompts=prompts, completions=answers, task=self.task, gold=gold, rewrite=rewrite, **columns)
            if getattr(func, "per_rewrite", False):
                per_metric[name] = [
                    func(**{k: v[c] if isinstance(v, list) else v for k, v in kwargs.items()})[0] for c in chunks
                ]
                per_example[name] = None
                continue
            values = func(**kwargs)
            none_values += sum(v is None for v in values)
            per_example[name] = [values[chunk] for chunk in chunks]
            per_metric[name] = [_mean(chunk) for chunk in per_example[name]]

        rewards: list[float | None] = []
        for i in range(len(groups)):
            parts = [(per_metric[name][i], w) for name, _, w in self.weighted]
            rewards.append(None if any(v is None for v, _ in parts) else sum(v * w for v, w in parts))
        answers_by_group = [answers[chunk] for chunk in chunks]
        reward_se = [self._standard_error(per_example, i) for i in range(len(groups))]
        return Scores(rewards, per_metric, answers_by_group, none_values, per_example, reward_se)

    def _calibrated_answers(self, instructions: Sequence[str], prompts: Sequence[str]) -> list[str]:
        """Contextual calibration (Zhao et al. 2021): the label whose score on the input rises most above
        the log of its mean probability (normalized over the labels) on the backend's content-free inputs
        under the same instruction. Those prompts are task-model requests like any other."""
        texts = self.backend.content_free_inputs
        distinct = list(dict.fromkeys(instructions))
        empty = [self.task.prompt(rw, dict.fromkeys(self.task.input_fields, t)) for rw in distinct for t in texts]
        self.requests += len(empty)
        scores = self.backend.label_scores([*prompts, *empty])
        prior = {}
        for j, rw in enumerate(distinct):
            start = len(prompts) + j * len(texts)
            probs = [label_softmax(s) for s in scores[start : start + len(texts)]]
            prior[rw] = [math.log(sum(p) / len(p)) for p in zip(*probs, strict=True)]
        labels = list(self.task.labels.values())  # the backend's choices, in its order (label_choices)
        answers = []
        for rw, label_scores in zip(instructions, scores[: len(prompts)], strict=True):
            shifted = [s - p for s, p in zip(label_scores, prior[rw], strict=True)]
            answers.append(labels[best_index(shifted)])
        return answers

    def _standard_error(self, per_example: dict, i: int) -> float | None:
        """Standard error of rewrite i's reward, from its per-example weighted values."""
        if any(per_example[name] is None for name, _, _ in self.weighted):
            return None
        columns = [[(v, w) for v in per_example[name][i]] for name, _, w in self.weighted]
        rows = [row for row in zip(*columns, strict=True) if all(v is not None for v, _ in row)]
        values = [sum(v * w for v, w in row) for row in rows]
        if len(values) < 2:
            return None
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
