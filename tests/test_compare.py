"""prewrite.compare end to end on the tiny random Llama (hf task backend; tests/conftest.py: what the models
say does not matter to this machinery), at its smallest: the
baselines get exactly the task-LLM requests RL spent, every choice is made on dev before test is
scored, everything lands in MLflow, and a re-run in the same folder redoes nothing."""

import json

import pytest
from mlflow import MlflowClient

import prewrite.backends
from prewrite import compare as compare_mod
from prewrite.config_check import ConfigError
from tests.conftest import DEFAULT_EXPERIMENT
from tests.fake_backend import spy_on_backends

pytestmark = pytest.mark.integration


def test_equal_budget_dev_only_selection_mlflow_and_resume(compose_config, monkeypatch, tmp_path, tiny_models):
    spies = spy_on_backends(monkeypatch, prewrite.backends)
    cfg = compose_config(
        "compare", "seeds=[0]", "steps=2", "eval_every=1", "examples_per_step=2", "algorithm.num_generations=2",
        "algorithm.max_completion_length=8", "max_new_tokens=8", "dev_examples=4", "test_examples=6",
        "num_samples=3", "ape.samples_per_round=4", "opro.proposals_per_round=4", "gepa.reflection_minibatch_size=2",
        "save_checkpoints=false",
        "system_metrics_interval_s=null", "trainer.enable_progress_bar=false", f"paths.outputs_dir={tmp_path}",
        *tiny_models,
    )  # fmt: skip
    summary = compare_mod.compare(cfg)

    result = json.loads((tmp_path / "results.json").read_text())["seeds"][0]
    # RL: 2 steps x 2 rewrites x 2 examples, the initial instruction and 3 greedy evaluations on 4 dev rows
    rl_training = 2 * 2 * 2 + 4 * 4
    selection = 4 * result["candidates_scored"]["prewrite_s"]
    assert result["budget"] == rl_training + selection == result["task_llm_requests"]["rl"]
    for method in ("ape", "opro"):  # the whole budget, up to less than one more candidate's dev pass
        assert result["budget"] - 4 < result["task_llm_requests"][method] <= result["budget"]
        assert result["curves"][method][-1] == [result["task_llm_requests"][method], result["dev"][method]]
        reached = result["requests_to_match_prewrite_i"][method]  # the first point of its curve at PRewrite-I's dev
        assert reached == next((x for x, y in result["curves"][method] if y >= result["dev"]["prewrite_i"]), None)
    # GEPA: never over the budget; its last dev-scored candidate is where its curve ends
    gepa = result["candidates"]["gepa"]
    assert gepa[0]["instruction"] == "Classify the sentiment." and gepa[-1]["requests"] <= result["budget"]
    assert result["task_llm_requests"]["gepa"] <= result["budget"]
    assert result["curves"]["gepa"][-1] == [gepa[-1]["requests"], result["dev"]["gepa"]]
    assert result["rewriter_usage"]["gepa"]["calls"] >= 1  # the untrained rewriter reflected
    assert result["curves"]["rl"][-1][0] == result["budget"]
    assert result["candidates"]["opro"][0]["instruction"] == "Classify the sentiment."
    # PRewrite-I is the greedy rewrite training selected on dev (not a re-decoding at another precision)
    evals = [json.loads(line) for line in (tmp_path / "seed0" / "rl" / "rewrites.jsonl").read_text().splitlines()]
    best = max((r for r in evals if r["split"] == "dev"), key=lambda r: r["accuracy"])  # earliest of ties
    assert result["instructions"]["prewrite_i"] == best["rewrite"] and result["dev"]["prewrite_i"] == best["accuracy"]

    # test rows were asked about the five chosen instructions and nothing else
    task = compare_mod.load_task(cfg.task)
    test_inputs = {r["sentence"] for r in task.eval_rows("test", 6, 0)}

    def instruction_if_on_test(prompt):
        head, sentence = prompt.rsplit("\n\nSentence: ", 1)
        return head if sentence.split("\nAnswer:")[0] in test_inputs else None

    on_test = {instruction_if_on_test(p) for p in spies[0].prompts} - {None}
    assert on_test == set(result["instructions"].values())
    assert summary["prewrite_s"]["test_mean"] == result["test"]["prewrite_s"]
    assert (tmp_path / "curve.png").stat().st_size > 10_000 and "| PRewrite-S" in (tmp_path / "results.md").read_text()

    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    runs = {
        r.info.run_name: r
        for r in client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    }
    parent = runs.pop(next(n for n in runs if n.startswith("compare-")))
    assert set(runs) == {"rl-seed0", "ape-seed0", "opro-seed0", "gepa-seed0"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert parent.data.metrics["test/prewrite_s/accuracy_mean"] == result["test"]["prewrite_s"]
    for name, method in (("rl-seed0", "rl"), ("ape-seed0", "ape"), ("gepa-seed0", "gepa")):
        curve = [(m.step, m.value) for m in client.get_metric_history(runs[name].info.run_id, "curve/dev_accuracy")]
        assert curve == [tuple(p) for p in result["curves"][method]]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts >= {"results.json", "results.md", "plots", "test_examples_seed0.json"}
    table = json.load(open(client.download_artifacts(parent.info.run_id, "test_examples_seed0.json", str(tmp_path))))
    examples = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(examples) == result["test_rows"]  # one row per test example, every method's answer and score
    for method, score in result["test"].items():
        assert sum(e[f"{method}_accuracy"] for e in examples) / len(examples) == pytest.approx(score)
        assert all(isinstance(e[f"{method}_answer"], str) for e in examples)
    gepa_run = runs["gepa-seed0"].info.run_id
    assert {a.path for a in client.list_artifacts(gepa_run)} >= {"candidates.json", "instruction.txt"}
    assert runs["gepa-seed0"].data.metrics["usage/rewriter/calls"] == result["rewriter_usage"]["gepa"]["calls"]
    assert "| GEPA" in (tmp_path / "results.md").read_text()

    # each method's choice is a version of the task's prompt, tagged with the run that chose it and its
    # scores; training registered the initial instruction and its best rewrite; `best` holds the top dev score
    versions = list(client.search_prompt_versions(DEFAULT_EXPERIMENT))
    by_method = {m: v for v in versions for m in v.tags["method"].split(",")}
    assert set(by_method) == {"initial", "train_best", "prewrite_i", "prewrite_s", "ape", "opro", "gepa"}
    run_ids = result["run_ids"] | {"prewrite_i": result["rl_run_id"], "prewrite_s": result["rl_run_id"]}
    for method in ("prewrite_i", "prewrite_s", "ape", "opro", "gepa"):
        version = by_method[method]
        assert version.template == result["instructions"][method]
        assert run_ids[method] in version.tags["run_id"].split(",")
        assert float(version.tags["dev_score"]) == result["dev"][method]
        assert float(version.tags["test_score"]) == result["test"][method]
    best = client.get_prompt_version_by_alias(DEFAULT_EXPERIMENT, "best")
    assert float(best.tags["dev_score"]) == max(float(v.tags["dev_score"]) for v in versions)

    # a re-run in the same folder finds the seed done: no training, no task-LLM request
    compare_mod.compare(cfg)
    assert spies[1].prompts == []
    # ... and refuses, before any work, to mix seeds made with other settings into its results
    cfg.num_samples = 4
    with pytest.raises(ValueError, match=r"num_samples: '3' -> '4'"):
        compare_mod.compare(cfg)
    assert len(spies) == 2


def test_transfer_mode_compares_a_mixture_trained_rewriter_on_an_unseen_task(
    compose_config, monkeypatch, tmp_path, tiny_models
):
    spies = spy_on_backends(monkeypatch, prewrite.backends)
    cfg = compose_config(
        "compare", "seeds=[0]", "task=mixture", "task.members=[trec,subj]", "transfer_to=[cr]", "transfer_budget=14",
        "methods=[ape]", "steps=2", "eval_every=1", "examples_per_step=2", "algorithm.num_generations=2",
        "algorithm.max_completion_length=8", "max_new_tokens=8", "dev_examples=4", "test_examples=6",
        "num_samples=2", "ape.samples_per_round=4", "save_checkpoints=false", "register_prompts=false",
        "system_metrics_interval_s=null", "trainer.enable_progress_bar=false", f"paths.outputs_dir={tmp_path}",
        *tiny_models,
    )  # fmt: skip
    summary = compare_mod.compare(cfg)

    result = json.loads((tmp_path / "cr" / "results.json").read_text())["seeds"][0]
    assert set(summary) == {"cr"} and summary["cr"]["prewrite_i"]["test_mean"] == result["test"]["prewrite_i"]
    # PRewrite-I spends nothing on cr; PRewrite-S its samples' dev passes; APE its transfer budget (4 dev rows each)
    assert result["task"] == "cr" and result["budget"] == 14 and result["task_llm_requests"]["prewrite_i"] == 0
    assert result["task_llm_requests"]["rl"] == 4 * result["candidates_scored"]["prewrite_s"]
    assert result["task_llm_requests"]["ape"] == 12
    assert result["curves"]["rl"][0] == [0, result["dev"]["prewrite_i"]]
    reached = result["requests_to_match_prewrite_i"]["ape"]
    assert reached == next((x for x, y in result["curves"]["ape"] if y >= result["dev"]["prewrite_i"]), None)
    assert "took to reach PRewrite-I's dev score" in (tmp_path / "cr" / "results.md").read_text()

    # the first backend is cr's: it saw cr's dev and test rows only, and test rows with the chosen instructions
    # only; training (on trec and subj) never asked about a cr row
    cr = compare_mod.load_task(compare_mod.task_configs(["cr"], "transfer_to")[0])
    dev, test = ({r["sentence"] for r in cr.eval_rows(split, n, 0)} for split, n in (("dev", 4), ("test", 6)))
    asked = [p.rsplit("\n\nSentence: ", 1) for p in spies[0].prompts]
    assert asked and all(s.split("\nAnswer:")[0] in dev | test for _, s in asked)
    assert {h for h, s in asked if s.split("\nAnswer:")[0] in test} == set(result["instructions"].values())
    assert not any(s in p for p in spies[1].prompts for s in dev | test)

    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs.pop(next(n for n in runs if n.startswith("compare-mixture-to-cr-")))
    assert set(runs) == {"rl-seed0", "ape-cr-seed0"} and runs["ape-cr-seed0"].data.tags["prewrite.task"] == "cr"
    assert parent.data.metrics["test/cr/prewrite_i/accuracy_mean"] == result["test"]["prewrite_i"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "cr")} >= {"cr/results.json", "cr/plots"}

    # a task trained on, or an unknown one, is refused before any work
    for transfer_to, message in (("[subj]", r"\['subj'\] trained on"), ("[nope]", "unknown task 'nope'")):
        cfg = compose_config("compare", "task=mixture", "task.members=[trec,subj]", f"transfer_to={transfer_to}")
        with pytest.raises(ConfigError, match=message):
            compare_mod.target_tasks(cfg)
