"""prewrite.evaluate: PRewrite-S selects on dev only; the report covers the initial instruction,
PRewrite-I and PRewrite-S on test."""

import json

import pytest
from mlflow import MlflowClient

from prewrite import evaluate as evaluate_mod
from prewrite import models
from tests.fake_backend import spy_on_backends

pytestmark = pytest.mark.integration


def test_prewrite_s_selects_on_dev_and_test_scores_only_the_three_reported(compose_config, monkeypatch, tmp_path):
    spies = spy_on_backends(monkeypatch, evaluate_mod)
    base = models.resolve("embedded:smollm2-135m-instruct")  # an untrained rewriter is a rewriter too
    cfg = compose_config(
        "evaluate", f"rewriter_path={base}", "num_samples=4", "dev_examples=6", "test_examples=8",
        "max_new_tokens=24", f"paths.outputs_dir={tmp_path}",
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
    test_sentences = {r["sentence"] for r in task.sample("test", 8, seed=[cfg.seed, 1 << 31])}
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

    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("prewrite-sst2").experiment_id])[0]
    assert run.data.metrics["test/prewrite_s/accuracy"] == by_method["prewrite_s"]["test_accuracy"]
    assert {"evaluation.json", "candidates.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/methods.png"]
    assert (tmp_path / "plots" / "methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
