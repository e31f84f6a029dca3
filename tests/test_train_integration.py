"""Two real GRPO steps with the embedded model, end to end through the CLI, into a real MLflow store."""

import json
import math
import re
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from prewrite import precision
from tests.conftest import DEFAULT_EXPERIMENT, DEFAULT_TASK, ROOT, run_at_once

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("outputs")
    cmd = [
        sys.executable, "-m", "prewrite.train",
        "steps=2", "eval_every=2", "examples_per_step=2", "dev_examples=4",
        "algorithm.num_generations=3", "algorithm.max_completion_length=16",
        f"paths.outputs_dir={outputs}", "trainer.enable_progress_bar=false",
        "save_checkpoints=false",  # 1.6 GB each; resume has its own test
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    return proc, client, outputs


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_run_is_logged_to_mlflow_with_params_metrics_and_artifacts(run):
    proc, client, _ = run
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert f"MLflow run {r.info.run_id}" in proc.stdout
    assert "make ui" in proc.stdout

    assert r.data.params["algorithm.num_generations"] == "3"
    assert r.data.params["task.instruction"] == "Classify the sentiment."
    assert "{instruction}" in r.data.params["meta_prompt"]  # full value, not cut at 250 chars
    # precision `auto` was resolved for this machine before the step ran, and the choice recorded with its reason
    assert r.data.params["hardware.precision"] == "32-true"  # on a CPU, with or without native bf16
    assert r.data.params["precision_auto.hardware.precision"].startswith("32-true (CPU capability")
    assert r.data.params["task_backend.dtype"] == precision.resolve_dtype("auto", "cpu")  # bf16 where native

    loss = history(client, r.info.run_id, "train/loss")
    assert [s for s, _ in loss] == [1, 2] and all(math.isfinite(v) for _, v in loss)
    assert [s for s, _ in history(client, r.info.run_id, "train/reward")] == [1, 2]
    assert [s for s, _ in history(client, r.info.run_id, "dev/accuracy")] == [0, 2]
    assert history(client, r.info.run_id, "train/task_llm_calls")[0][1] <= 3 * 2  # G x M, deduplicated
    for key in ("train/kl", "train/clip_ratio/region", "train/completion_length", "train/time/step_s",
                "dev/initial_instruction/accuracy"):  # fmt: skip
        assert history(client, r.info.run_id, key), key

    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "rewrites.json"} <= artifacts

    # the initial instruction competes with the rewrites: the run says which one a user should keep
    initial = history(client, r.info.run_id, "dev/initial_instruction/accuracy")[0][1]
    best = history(client, r.info.run_id, "dev/best/accuracy")[0][1]
    selected = r.data.tags["prewrite.selected"]
    assert selected == ("initial" if initial >= best else "rewrite")
    assert history(client, r.info.run_id, "dev/selected/accuracy")[0][1] == max(initial, best)
    assert ("No rewrite beat the initial instruction on dev" in proc.stdout) == (selected == "initial")

    # usage per role, totalled over the run: rewriter samples and tokens, task-LLM calls and cache
    rewriter_calls = [v for _, v in history(client, r.info.run_id, "train/usage/rewriter/calls")]
    assert rewriter_calls == [3.0, 6.0]  # 3 rewrites per step
    tokens = [v for _, v in history(client, r.info.run_id, "train/usage/rewriter/completion_tokens")]
    assert 0 < tokens[0] <= tokens[1] <= 2 * 3 * 16
    task_calls = [v for _, v in history(client, r.info.run_id, "train/usage/task_llm/calls")]
    assert task_calls == sorted(task_calls) and task_calls[-1] > 0
    assert 0.0 <= history(client, r.info.run_id, "train/usage/task_llm/cache_hit_rate")[-1][1] <= 1.0
    # requests: every prompt the scorer asked for, cache hits included (what prewrite.compare budgets by):
    # step 0 scores the initial instruction and the greedy rewrite on 4 dev rows, each step 3 x 2 prompts
    assert history(client, r.info.run_id, "train/usage/task_llm/requests") == [(1, 14.0), (2, 20.0)]
    assert history(client, r.info.run_id, "dev/task_llm_requests") == [(0, 8.0), (2, 24.0)]


def test_rewrites_table_holds_every_rewrite_with_its_reward(run):
    _, client, outputs = run
    r = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    path = client.download_artifacts(r.info.run_id, "rewrites.json", str(outputs))
    table = json.loads(open(path).read())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    train = [row for row in rows if row["split"] == "train"]
    assert sorted(row["step"] for row in train) == [1, 1, 1, 2, 2, 2]
    assert any(row["rewrite"].strip() for row in train)
    assert all(row["reward"] is None or 0.0 <= row["reward"] <= 1.0 for row in train)
    assert {row["step"] for row in rows if row["split"] == "dev"} == {0, 2}
    initial = [row for row in rows if row["split"] == "initial"]
    assert initial and initial[0]["rewrite"] == "Classify the sentiment."

    run_dirs = list((outputs / "runs" / DEFAULT_TASK).iterdir())
    assert len(run_dirs) == 1
    lines = (run_dirs[0] / "rewrites.jsonl").read_text().splitlines()
    assert len(lines) == len(rows)


def test_console_reports_best_dev_score(run):
    proc, _, _ = run
    assert re.search(r"Best dev/accuracy: \d\.\d{4}", proc.stdout)


def test_best_rewriter_is_exported_as_a_hugging_face_folder_and_to_mlflow(run):
    _, client, outputs = run
    r = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    folder = next((outputs / "runs" / DEFAULT_TASK).iterdir()) / "rewriter"
    assert {"config.json", "model.safetensors", "tokenizer.json", "prewrite.json"} <= {p.name for p in folder.iterdir()}
    info = json.loads((folder / "prewrite.json").read_text())
    dev = history(client, r.info.run_id, "dev/accuracy")
    assert info["score"] == max(v for _, v in dev)
    assert info["step"] == next(s for s, v in dev if v == info["score"])  # the first best evaluation
    assert info["instruction"] == "Classify the sentiment." and "{instruction}" in info["meta_prompt"]
    assert "rewriter/config.json" in {a.path for a in client.list_artifacts(r.info.run_id, "rewriter")}


def test_rewrite_cli_reads_a_run_folder_or_an_mlflow_run_id(run):
    _, client, outputs = run
    run_id = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0].info.run_id
    run_dir = next((outputs / "runs" / DEFAULT_TASK).iterdir())
    texts = []
    for proc in run_at_once(
        *([sys.executable, "-m", "prewrite.rewrite", f"rewriter_path={spec}", f"paths.outputs_dir={outputs}"]
          for spec in (str(run_dir), run_id))
    ):  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        texts.append(proc.stdout.strip().splitlines()[-1])
    assert texts[0] and texts[0] == texts[1]


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path, tiny_models):
    # learning_rate 0: the rewriter never changes, so dev never improves after the first evaluation
    cmd = [
        sys.executable, "-m", "prewrite.train", *tiny_models,
        "steps=5", "eval_every=1", "early_stopping_patience=1", "algorithm.learning_rate=0",
        "examples_per_step=2", "dev_examples=2", "algorithm.num_generations=2", "algorithm.max_completion_length=8",
        f"paths.outputs_dir={tmp_path}", "trainer.enable_progress_bar=false", "log_rewriter_to_mlflow=false",
        "save_checkpoints=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    r = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    assert [s for s, _ in history(client, r.info.run_id, "train/loss")] == [1, 2]
    info = json.loads(
        next((tmp_path / "runs" / DEFAULT_TASK).iterdir()).joinpath("rewriter", "prewrite.json").read_text()
    )
    assert info["step"] == 0  # the untrained rewriter was never beaten


def test_how_often_dev_is_evaluated_does_not_change_what_is_trained(tmp_path, tiny_models):
    """Dev evaluations only observe: the same seed samples the same rewrites whether dev is scored after
    every step or only at the end, so eval_every is a choice of how many candidates selection sees."""

    def train_rows(eval_every: int) -> list[tuple]:
        out = tmp_path / f"every{eval_every}"
        cmd = [
            sys.executable, "-m", "prewrite.train", *tiny_models, "steps=3", f"eval_every={eval_every}",
            "examples_per_step=2", "dev_examples=2", "algorithm.num_generations=2", "algorithm.max_completion_length=8",
            f"paths.outputs_dir={out}", "trainer.enable_progress_bar=false", "log_rewriter_to_mlflow=false",
            "save_checkpoints=false", "logger=none",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        rows = (next((out / "runs" / DEFAULT_TASK).iterdir()) / "rewrites.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in rows]
        assert [r["step"] for r in rows if r["split"] == "dev"] == list(range(0, 4, eval_every))
        return [(r["step"], r["rewrite"]) for r in rows if r["split"] == "train"]

    every_step, at_the_end = train_rows(1), train_rows(3)
    assert len(every_step) == 3 * 2 and every_step == at_the_end


def test_rescore_scores_a_runs_logged_rewrites_from_its_folder_or_its_mlflow_run_id(run, compose_config, tmp_path):
    from prewrite.rescore import SOURCE_RUN_TAG, rescore

    _, _, outputs = run
    run_dir = next((outputs / "runs" / DEFAULT_TASK).iterdir())
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    store = f"sqlite:///{tmp_path}/rescores.db"  # the training's store stays as the tests above read it
    tables = [
        rescore(compose_config("rescore", f"run={spec}", "which=all", "examples=4", "dev_examples=4",
                               f"paths.outputs_dir={outputs}", f"logger.tracking_uri={store}"))
        for spec in (str(run_dir), run_id)
    ]  # fmt: skip
    assert tables[0] == tables[1]
    logged = [json.loads(line) for line in (run_dir / "rewrites.jsonl").read_text().splitlines()]
    distinct = list(dict.fromkeys(r["rewrite"] for r in logged if r["split"] != "initial"))
    assert [r["split"] for r in tables[0]][0] == "initial" and [r["rewrite"] for r in tables[0][1:]] == distinct
    for row in tables[0]:
        assert 0.0 <= row["dev_accuracy"] <= 1.0
        if row["split"] != "train":  # the same 4 seeded dev rows and task model as the training: the same score
            assert row["dev_accuracy"] == row["logged_dev_score"]

    client = MlflowClient(store)
    rescored = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    assert len(rescored) == 2 and {r.data.tags[SOURCE_RUN_TAG] for r in rescored} == {run_id}
    assert "rescored.json" in {a.path for a in client.list_artifacts(rescored[0].info.run_id)}

    top = rescore(compose_config("rescore", f"run={run_dir}", "which=top_k", "top_k=1", "include_initial=false",
                                 "examples=4", f"paths.outputs_dir={outputs}", "logger=none"))  # fmt: skip
    best_logged = max(r["dev_score"] for r in logged if r["split"] == "dev")
    assert len(top) == 1 and top[0]["logged_dev_score"] == best_logged
