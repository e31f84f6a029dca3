"""GEPA through the real `gepa` package (prewrite/gepa_search.py): the adapter scores as the harness's
scorer does, the task-LLM budget is never exceeded, selection reads dev only, and the reflection model
sees the task model's answers beside the gold. The task is the real SST-2 task; the task model and the
reflection model are scripted (the integration test at the end runs the embedded model)."""

import json

import pytest
from omegaconf import OmegaConf

from prewrite import baselines, gepa_search, search
from prewrite import compare as compare_mod
from prewrite.backends.base import TaskBackend
from prewrite.rewards import RewriteScorer
from prewrite.selection import DevSelection
from prewrite.tasks import load_task


class CountingSayer(TaskBackend):
    """A task LLM that says "positive" when the instruction says so and otherwise something useless;
    it records every prompt it is asked."""

    def __init__(self):
        super().__init__()
        self.prompts = []

    def generate(self, prompts):
        self.prompts += prompts
        return ["positive" if "say positive" in p else "hmm" for p in prompts]

    def cache_identity(self):
        return {"backend": "counting sayer"}


class ParitySayer(CountingSayer):
    """Answers "positive" or "negative" by the prompt's length: right on some rows, wrong on others."""

    def generate(self, prompts):
        self.prompts += prompts
        return ["positive" if len(p) % 2 else "The sentiment is negative." for p in prompts]


def scripted_reflection():
    """A reflection model proposing "say positive <n>" (in GEPA's ``` block) and keeping its prompts."""
    shown = []

    def complete(prompt):
        shown.append(prompt)
        return f"```\nsay positive {len(shown)}\n```", 100, 5

    lm = gepa_search.ReflectionLM(complete)
    lm.shown = shown
    return lm


@pytest.fixture(scope="module")
def task():
    return load_task(OmegaConf.load("conf/task/sst2.yaml"))


def selection(task, backend, budget, dev=10, metric="accuracy"):
    scorer = RewriteScorer(task, backend, [metric], [1.0])
    return DevSelection(scorer, task.eval_rows("dev", dev, seed=0), metric, budget)


@pytest.mark.parametrize("metric", ["accuracy", "f1"])  # f1 is macro-F1 here: defined over the whole sample only
def test_adapter_scores_equal_the_scorers_on_real_rows(task, metric):
    sel = selection(task, ParitySayer(), budget=None, metric=metric)
    rows = task.sample("train", 12, seed=[0, 1])
    adapter = gepa_search.ScorerAdapter(sel)
    out = adapter.evaluate(rows, {"instruction": "Classify."}, capture_traces=True)
    expected = RewriteScorer(task, ParitySayer(), [metric], [1.0])(["Classify."], rows)
    assert out.outputs == expected.answers[0]
    assert sum(out.scores) / len(rows) == pytest.approx(expected.metrics[metric][0])
    if metric == "accuracy":  # per example: the parsed answer against the gold label
        assert out.scores == [float(task.parse(a) == task.gold(r)) for a, r in zip(out.outputs, rows, strict=True)]
        assert 0 < sum(out.scores) < len(rows)
    assert sel.spent == 12 == sel.scorer.requests and adapter.dev_scores == {}  # not the dev rows
    adapter.evaluate(sel.dev_rows, {"instruction": "Classify."})
    assert adapter.dev_scores == {
        "Classify.": pytest.approx(sel.scorer(["Classify."], sel.dev_rows).metrics[metric][0])
    }


def test_reflective_dataset_shows_the_answers_and_the_gold(task):
    adapter = gepa_search.ScorerAdapter(selection(task, ParitySayer(), budget=None))
    rows = task.sample("train", 3, seed=[0, 2])
    batch = adapter.evaluate(rows, {"instruction": "Classify."}, capture_traces=True)
    records = adapter.make_reflective_dataset({"instruction": "Classify."}, batch, ["instruction"])["instruction"]
    for record, row, answer, score in zip(records, rows, batch.outputs, batch.scores, strict=True):
        assert record["Inputs"] == {"sentence": row["sentence"]} and record["Generated Outputs"] == answer
        assert record["Feedback"].startswith("Correct" if score == 1.0 else "Incorrect")
        assert record["Feedback"].endswith(f"The correct answer is {task.labels[row['label']]!r}.")


@pytest.mark.parametrize("budget", [10, 13, 16, 29, 36, 47, 60, 95])
def test_budget_is_never_exceeded_and_selection_reads_dev_only(task, budget):
    backend = CountingSayer()
    sel = selection(task, backend, budget)
    reflection = scripted_reflection()
    gepa_search.gepa_search(reflection, sel, task.splits["train"], "Classify the sentiment.", seed=0)
    assert len(backend.prompts) == sel.spent == sel.scorer.requests <= budget
    # it ended when the next evaluation (a minibatch of 3 or a dev pass of 10) could not be paid for
    assert budget - sel.spent < 10
    test_sentences = {r["sentence"] for r in task.splits["test"]}
    assert not any(p.rsplit("Sentence: ", 1)[1].split("\nAnswer:")[0] in test_sentences for p in backend.prompts)
    # every dev-scored candidate is recorded with the requests spent by then, its parent and GEPA index
    assert sel.scored[0]["instruction"] == "Classify the sentiment." and sel.scored[0]["parent"] is None
    assert [c["candidate"] for c in sel.scored] == list(range(len(sel.scored)))
    assert all(c["parent"] < c["candidate"] for c in sel.scored[1:])
    assert [c["requests"] for c in sel.scored] == sorted(c["requests"] for c in sel.scored)
    assert sel.curve()[-1][1] == sel.best["dev_score"]
    if budget >= 36:  # enough for the seed on dev, a proposal and its dev evaluation
        assert sel.best["instruction"].startswith("say positive") and reflection.usage.calls >= 1
        assert reflection.usage.prompt_tokens == 100 * reflection.usage.calls
        assert "Classify the sentiment." in reflection.shown[0] and "The correct answer is" in reflection.shown[0]


def test_a_budget_below_one_dev_pass_and_bad_options_are_refused(task, compose_config):
    with pytest.raises(ValueError, match="at least one pass over the 10 dev rows"):
        gepa_search.gepa_search(scripted_reflection(), selection(task, CountingSayer(), 9), [], "x", seed=0)
    cfg = compose_config("compare", "gepa.reflection_lm=bogus")
    with pytest.raises(ValueError, match="gepa.reflection_lm must be 'rewriter' or 'backend'"):
        baselines.gepa_reflection_lm(cfg, rewriter=None)
    cfg = compose_config("compare", "gepa.reflection_lm=backend")
    with pytest.raises(ValueError, match="gepa.reflection_backend"):
        baselines.gepa_reflection_lm(cfg, rewriter=None)
    with pytest.raises(ValueError, match="methods: unknown search method 'bogus'"):
        compare_mod.reported_methods(compose_config("compare", "methods=[ape,bogus]"))


def test_an_error_other_than_the_budget_is_raised(task):
    def broken(prompt):
        raise RuntimeError("reflection server down")

    sel = selection(task, CountingSayer(), 100)
    with pytest.raises(RuntimeError, match="reflection server down"):
        gepa_search.gepa_search(gepa_search.ReflectionLM(broken), sel, task.splits["train"], "Classify.", seed=0)


@pytest.mark.integration
def test_search_entry_runs_gepa_on_the_embedded_model(compose_config, tmp_path):
    """`python -m prewrite.search method=gepa` on the real embedded model (task model and reflection)."""
    from mlflow import MlflowClient

    cfg = compose_config(
        "search", "method=gepa", "budget=16", "dev_examples=4", "test_examples=4", "max_new_tokens=8",
        "gepa.reflection_minibatch_size=2", f"paths.outputs_dir={tmp_path}",
    )  # fmt: skip
    result = search.search(cfg)
    assert result["task_llm_requests"] <= 16 and result["candidates"][0]["instruction"] == "Classify the sentiment."
    assert result["rewriter_usage"]["calls"] >= 1 and result["rewriter_usage"]["completion_tokens"] >= 1
    assert json.loads((tmp_path / "search.json").read_text())["instruction"] == result["instruction"]
    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.run_name == "gepa-sst2_sentences" and run.data.metrics["usage/rewriter/calls"] >= 1
    curve = [(m.step, m.value) for m in client.get_metric_history(result["run_id"], "curve/dev_accuracy")]
    assert curve == [tuple(p) for p in result["curve"]]
    assert {a.path for a in client.list_artifacts(result["run_id"])} >= {"candidates.json", "instruction.txt"}
