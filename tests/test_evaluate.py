"""prewrite.evaluate: PRewrite-S selects on dev only; the report covers the initial instruction,
PRewrite-I and PRewrite-S on test."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from prewrite import evaluate as evaluate_mod
from prewrite import model_zoo
from tests.conftest import DEFAULT_EXPERIMENT
from tests.fake_backend import spy_on_backends

pytestmark = pytest.mark.integration


def test_prewrite_s_selects_on_dev_and_test_scores_only_the_three_reported(compose_config, monkeypatch, tmp_path):
    spies = spy_on_backends(monkeypatch, evaluate_mod)
    base = model_zoo.resolve("embedded:smollm2-135m-instruct")  # an untrained rewriter is a rewriter too
    cfg = compose_config(
        "evaluate", f"rewriter_path={base}", "num_samples=4", "dev_examples=6", "test_examples=8",
        "max_new_tokens=24", f"paths.outputs_dir={tmp_path}", "seed=3",
    )  # fmt: skip
    results = evaluate_mod.evaluate(cfg)

    report = json.loads((tmp_path / "evaluation.json").read_text())
    candidates = report["candidates"]
    selected = next(c for c in candidates if c["selected"])
    assert selected["dev_accuracy"] == max(c["dev_accuracy"] for c in candidates)
    by_method = {r["method"]: r for r in report["results"]}
    assert by_method["prewrite_s"]["instruction"] == selected["instruction"]
    assert by_method["initial"]["instruction"] == "Classify the sentiment."

    task = evaluate_mod.load_task(cfg.task)
    # the test rows come from test_seed, not the run's seed: every seed and method reports on the same rows
    test_sentences = {r["sentence"] for r in task.eval_rows("test", 8, 0)}
    assert cfg.test_seed == 0 and test_sentences != {r["sentence"] for r in task.eval_rows("test", 8, 3)}
    on_test = {
        p.split("\n\nSentence: ")[0]
        for p in spies[0].prompts
        if p.split("Sentence: ")[-1].split("\nAnswer:")[0] in test_sentences
    }
    assert on_test == {r["instruction"] for r in report["results"]}  # no candidate was scored on test
    # with the initial instruction among the candidates, a rewrite is handed back only if it beat it on dev
    safe = by_method["prewrite_s_or_initial"]
    if selected["dev_accuracy"] > by_method["initial"]["dev_accuracy"]:
        assert safe["instruction"] == selected["instruction"]
    else:
        assert safe["instruction"] == "Classify the sentiment."
    assert safe["dev_accuracy"] == max(selected["dev_accuracy"], by_method["initial"]["dev_accuracy"])
    for name in ("initial", "prewrite_i", "prewrite_s", "prewrite_s_or_initial"):
        assert results[f"test/{name}/accuracy"] == by_method[name]["test_accuracy"]
    # what each spent choosing on this task's dev rows, and per test example
    assert results["cost/prewrite_i/optimization_task_llm_requests"] == 0
    assert results["cost/prewrite_s/optimization_task_llm_requests"] == 6 * len(candidates)
    assert results["cost/prewrite_i/rewriter_calls_per_test_example"] == pytest.approx(1 / 8)
    assert results["cost/initial/rewriter_calls_per_test_example"] == 0

    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    assert run.data.metrics["test/prewrite_s/accuracy"] == by_method["prewrite_s"]["test_accuracy"]
    assert run.data.tags["prewrite.transfer"] == "false"  # an untrained rewriter names no training task
    assert {"evaluation.json", "candidates.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/methods.png"]
    assert (tmp_path / "plots" / "methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # per test example, each method's answer and score, side by side
    table = json.load(open(client.download_artifacts(run.info.run_id, "test_examples.json", str(tmp_path))))
    examples = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert {e["input"] for e in examples} == test_sentences and len(examples) == 8
    assert {e["gold"] for e in examples} <= {"negative", "positive"}
    for name in by_method:
        assert all(isinstance(e[f"{name}_answer"], str) for e in examples)
        assert sum(e[f"{name}_accuracy"] for e in examples) / 8 == pytest.approx(by_method[name]["test_accuracy"])

    # PRewrite-I and PRewrite-S in the Prompt Registry (one version if they are the same text)
    texts = list(dict.fromkeys(by_method[m]["instruction"] for m in ("prewrite_i", "prewrite_s")))
    versions = [client.get_prompt_version(DEFAULT_EXPERIMENT, v) for v in range(1, len(texts) + 1)]
    assert [v.template for v in versions] == texts
    for v in versions:
        method = v.tags["method"].split(",")[0]
        assert v.tags["run_id"] == run.info.run_id and v.tags["test_rows"] == "8"
        assert float(v.tags["test_score"]) == by_method[method]["test_accuracy"]
        assert float(v.tags["dev_score"]) == by_method[method]["dev_accuracy"]


def test_a_trained_rewriter_rewrites_with_its_own_meta_prompt(compose_config, monkeypatch, tmp_path):
    """evaluate's config inherits train.yaml's meta prompt; a rewriter trained with another must be
    evaluated with the one it was trained with (prewrite.json), and the run's params must say so."""
    base = model_zoo.resolve("embedded:smollm2-135m-instruct")
    rewriter = tmp_path / "rewriter"
    rewriter.mkdir()
    for f in Path(base).iterdir():
        (rewriter / f.name).symlink_to(f)
    trained = "Make this instruction clearer for a sentiment classifier. Output it only.\nInstruction: {instruction}"
    info = {"task": "sst2_sentences", "trained_on": ["sst2_sentences"], "instruction": "Classify the sentiment."}
    (rewriter / "prewrite.json").write_text(json.dumps(info | {"meta_prompt": trained, "rewrite_mode": "task"}))
    seen = []
    real = evaluate_mod.rewriter_model.Rewriter.rewrite
    monkeypatch.setattr(
        evaluate_mod.rewriter_model.Rewriter,
        "rewrite",
        lambda self, i, m, *a, **k: seen.append(m) or real(self, i, m, *a, **k),
    )
    cfg = compose_config(
        "evaluate", f"rewriter_path={rewriter}", "num_samples=2", "dev_examples=4", "test_examples=4",
        "max_new_tokens=16", f"paths.outputs_dir={tmp_path}",
    )  # fmt: skip
    assert cfg.meta_prompt != trained
    evaluate_mod.evaluate(cfg)
    assert seen and set(seen) == {trained}  # PRewrite-I and PRewrite-S's samples alike
    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    assert run.data.params["meta_prompt"] == trained and run.data.params["rewrite_mode"] == "task"
    # what evaluate reads is logged; train.yaml's training settings, which it inherits but never reads, are not
    assert run.data.params["max_new_tokens"] == "16" and run.data.params["task.name"] == "sst2_sentences"
    assert not [p for p in run.data.params if p.split(".")[0] in evaluate_mod.NOT_READ + ("input_meta_prompt",)]
