"""GEPA (reflective prompt evolution, Agrawal et al. 2025) as a search baseline, through the `gepa` package.

GEPA evolves the instruction: it evaluates a parent on a minibatch of training rows, shows a reflection
model the task model's answers beside the gold answers, takes the reflection's new instruction, keeps
it if it does better on the same minibatch, and then scores it on the whole validation set (our dev
rows), where its Pareto front lives. Here:

- `ScorerAdapter.evaluate` scores a candidate with the harness's `RewriteScorer` (same task, template,
  backend, cache and metric as every other method), one task-LLM request per (instruction, row);
- the budget is the same ledger as APE's and OPRO's (`selection.DevSelection`: `budget`, `spent`): every
  evaluation, minibatches included, is charged there. GEPA's `max_metric_calls` counts evaluated
  examples, which is the same unit (its own evaluation cache, when on, skips the scorer and is
  charged by neither). GEPA checks that limit only between iterations, so the adapter also refuses
  any evaluation the remaining budget cannot pay for; that ends the run without overspending;
- every candidate GEPA scores on dev is recorded in the DevSelection (with its GEPA index and parent),
  so the choice, the budget curve and the candidates table are made as for the other methods.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gepa
from gepa.core.adapter import EvaluationBatch

from prewrite.rewards.scorer import Scores, gold_text
from prewrite.selection import DevSelection
from prewrite.usage import Usage

log = logging.getLogger(__name__)

COMPONENT = "instruction"  # the one text component GEPA evolves


class BudgetSpent(Exception):
    """An evaluation the remaining task-LLM budget cannot pay for: GEPA's run ends there."""


def example_scores(scores: Scores, metric: str) -> list[float]:
    """Per-example scores of the first rewrite, for GEPA (floats, higher is better), whose mean is the
    scorer's value of `metric`: a value that could not be computed gets the mean of the others (the
    scorer leaves it out of the mean), and a metric defined only over the whole sample (macro-F1)
    gives every example the sample's value."""
    mean = scores.metrics[metric][0]
    fill = 0.0 if mean is None else mean
    values = scores.per_example.get(metric)
    n = len(scores.answers[0])
    if values is None:
        return [fill] * n
    return [fill if v is None or math.isnan(v) else float(v) for v in values[0]]


class ScorerAdapter:
    """gepa.GEPAAdapter over RewriteScorer: a candidate is {"instruction": text}; data instances are the
    task's rows. Evaluations are charged to `selection` (its budget is never exceeded)."""

    propose_new_texts = None  # GEPA's own reflective proposal, with our reflection model

    def __init__(self, selection: DevSelection, feedback_examples: int | None = None):
        self.selection = selection
        self.task = selection.scorer.task
        self.metric = selection.metric
        self.feedback_examples = feedback_examples
        self.exhausted = False
        self.dev_scores: dict[str, float | None] = {}  # the scorer's dev value of each instruction scored on dev

    def evaluate(self, batch: list[dict], candidate: dict[str, str], capture_traces: bool = False):
        sel, instruction = self.selection, candidate[COMPONENT]
        if sel.budget is not None and sel.spent + len(batch) > sel.budget:
            self.exhausted = True
            raise BudgetSpent(f"{len(batch)} more requests would exceed the budget ({sel.spent} of {sel.budget} spent)")
        scores = sel.scorer([instruction], batch)
        sel.spent += len(batch)
        if self._is_dev(batch):
            self.dev_scores[instruction] = scores.metrics[self.metric][0]
        per_example = example_scores(scores, self.metric)
        answers = scores.answers[0]
        trajectories = None
        if capture_traces:
            trajectories = [
                {"row": row, "answer": answer, "score": score}
                for row, answer, score in zip(batch, answers, per_example, strict=True)
            ]
        return EvaluationBatch(outputs=answers, scores=per_example, trajectories=trajectories)

    def _is_dev(self, batch: list[dict]) -> bool:
        dev = self.selection.dev_rows
        return len(batch) == len(dev) and all(a is b for a, b in zip(batch, dev, strict=True))

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: EvaluationBatch, components_to_update: list[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """What the reflection model reads: each row's input, the task model's answer, and the gold."""
        records = []
        for t in eval_batch.trajectories[: self.feedback_examples]:
            gold = self.task.gold(t["row"])
            golds = gold if isinstance(gold, list) else [gold]
            expected = " or ".join(repr(gold_text(self.task, g)) for g in golds)
            verdict = "Correct" if t["score"] >= 1.0 else "Incorrect" if t["score"] <= 0.0 else "Partly correct"
            records.append(
                {
                    "Inputs": {f: str(t["row"][f]) for f in self.task.input_fields},
                    "Generated Outputs": t["answer"],
                    "Feedback": f"{verdict} ({self.metric} {t['score']:.2f}). The correct answer is {expected}.",
                }
            )
        return {name: records for name in components_to_update}


class ReflectionLM:
    """GEPA's reflection model: a callable from prompt to text that counts its calls and tokens (the
    rewriter role's usage). `complete(prompt) -> (text, prompt_tokens, completion_tokens)`."""

    def __init__(self, complete: Callable[[str], tuple[str, int, int]]):
        self._complete = complete
        self.usage = Usage()
        # GEPA logs a failed reflection and carries on; these let gepa_search stop and say why instead
        self.failures_in_a_row, self.last_error = 0, None

    def __call__(self, prompt: str | list[dict]) -> str:
        if not isinstance(prompt, str):  # GEPA sends a message list only with images
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        try:
            text, prompt_tokens, completion_tokens = self._complete(prompt)
        except Exception as e:
            self.failures_in_a_row, self.last_error = self.failures_in_a_row + 1, e
            raise
        self.failures_in_a_row = 0
        self.usage.add(1, prompt_tokens, completion_tokens)
        return text

    # GEPA reads these when present (rather than estimating tokens from characters itself)
    total_cost = 0.0

    @property
    def total_tokens_in(self) -> int:
        return self.usage.prompt_tokens

    @property
    def total_tokens_out(self) -> int:
        return self.usage.completion_tokens


def rewriter_reflection(rewriter, temperature: float, max_new_tokens: int) -> ReflectionLM:
    """The reflection model as one sampled reply of a rewriter model (the untrained one, by default)."""

    def complete(prompt: str):
        before = rewriter.usage.snapshot()
        text = rewriter.complete(prompt, 1, temperature, max_new_tokens)[0]
        after = rewriter.usage.snapshot()
        return (
            text,
            int(after["prompt_tokens"] - before["prompt_tokens"]),
            int(after["completion_tokens"] - before["completion_tokens"]),
        )

    return ReflectionLM(complete)


def backend_reflection(backend) -> ReflectionLM:
    """The reflection model as a task-LLM backend (e.g. an OpenAI-compatible server), answering greedily;
    tokens as the backend counts them."""

    def complete(prompt: str):
        before = backend.usage_snapshot()
        text = backend.generate([prompt])[0]
        after = backend.usage_snapshot()
        return text, *(int(after.get(k, 0) - before.get(k, 0)) for k in ("prompt_tokens", "completion_tokens"))

    return ReflectionLM(complete)


class _Recorder:
    """GEPA callbacks: every candidate scored on dev joins the DevSelection (with its GEPA index,
    parent and the requests spent so far); an error other than the budget's is kept to re-raise."""

    def __init__(self, adapter: ScorerAdapter):
        self.adapter, self.error = adapter, None

    def on_valset_evaluated(self, event: Mapping) -> None:
        instruction = event["candidate"][COMPONENT]
        parents = [p for p in event["parent_ids"] if p is not None]
        sel = self.adapter.selection
        sel.scored.append(
            {
                "instruction": instruction,
                "dev_score": self.adapter.dev_scores.get(instruction, event["average_score"]),
                "requests": sel.spent,
                "round": event["iteration"],
                "candidate": event["candidate_idx"],
                "parent": parents[0] if parents else None,
            }
        )

    def on_error(self, event: Mapping) -> None:
        if not isinstance(event["exception"], BudgetSpent):
            self.error = event["exception"]


class _Log:
    """GEPA's progress lines into this module's logger."""

    def log(self, message: str) -> None:
        log.info("gepa: %s", message)


def gepa_search(
    reflection_lm: ReflectionLM,
    selection: DevSelection,
    train_rows: Sequence[dict],
    instruction: str,
    seed: int,
    reflection_minibatch_size: int = 3,
    candidate_selection_strategy: str = "pareto",
    skip_perfect_score: bool = True,
    cache_evaluation: bool = True,
    acceptance_criterion: str = "strict_improvement",
    feedback_examples: int | None = None,
    reflection_prompt_template: str | None = None,
    patience: int = 3,
) -> DevSelection:
    """Runs gepa.optimize from `instruction` until `selection.budget` task-LLM requests are spent; GEPA's
    training minibatches come from `train_rows`, its validation set is `selection.dev_rows`. It also stops
    after `patience` iterations in a row that spend nothing (everything proposed was scored before), and
    fails after `patience` failed reflections in a row."""
    budget = selection.budget
    if budget is None or budget < len(selection.dev_rows):
        raise ValueError(
            f"gepa needs a budget of at least one pass over the {len(selection.dev_rows)} dev rows, got {budget}"
        )
    adapter = ScorerAdapter(selection, feedback_examples)
    recorder = _Recorder(adapter)
    idle = {"spent": -1, "iterations": 0}

    def stop(state) -> bool:
        idle["iterations"] = idle["iterations"] + 1 if selection.spent == idle["spent"] else 0
        idle["spent"] = selection.spent
        broken = reflection_lm.failures_in_a_row >= patience
        return adapter.exhausted or recorder.error is not None or idle["iterations"] >= patience or broken

    result = gepa.optimize(
        seed_candidate={COMPONENT: instruction},
        trainset=list(train_rows),
        valset=selection.dev_rows,
        adapter=adapter,
        reflection_lm=reflection_lm,
        reflection_minibatch_size=reflection_minibatch_size,
        candidate_selection_strategy=candidate_selection_strategy,
        skip_perfect_score=skip_perfect_score,
        reflection_prompt_template=reflection_prompt_template,
        max_metric_calls=budget - selection.spent,  # the same unit: one example evaluated = one request
        stop_callbacks=[stop],
        callbacks=[recorder],
        cache_evaluation=cache_evaluation,
        acceptance_criterion=acceptance_criterion,
        logger=_Log(),
        seed=seed,
        raise_on_exception=False,  # so that BudgetSpent ends the run with its result; other errors re-raised below
    )
    if recorder.error is not None:
        raise recorder.error
    if reflection_lm.failures_in_a_row >= patience:
        raise RuntimeError(
            f"gepa: the reflection model failed {reflection_lm.failures_in_a_row} times in a row: "
            f"{reflection_lm.last_error!r}"
        ) from reflection_lm.last_error
    log.info(
        "gepa: %d candidates, %d metric calls, %d task-LLM requests, best %r",
        result.num_candidates, result.total_metric_calls, selection.spent, result.best_candidate[COMPONENT],
    )  # fmt: skip
    return selection
