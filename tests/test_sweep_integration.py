"""Real sweeps of tiny trainings on the joblib launcher (2 workers) into one SQLite MLflow store:
one parent run per sweep, one child run per job, a failing job recorded while the others finish,
and an Optuna search whose objective is the dev metric train() returns."""

import json
import math
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from prewrite.sweep import ERROR, JOB, OVERRIDES, SWEEP_ID
from tests.conftest import DEFAULT_EXPERIMENT, ROOT, TINY_TRAINING

pytestmark = pytest.mark.integration

OBJECTIVE = "dev/best/accuracy"


def sweep_runs(client):
    runs = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    # the store is shared with the MLflow UI tests, which add an evaluation run: a sweep's parent has its id
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags and SWEEP_ID in r.data.tags]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    return parents, sorted(children, key=lambda r: int(r.data.tags[JOB]))


def test_grid_sweep_is_one_parent_with_a_tagged_child_per_job(grid_sweep):
    proc, client, outputs = grid_sweep
    # the failing job did not stop the sweep, but the multirun says it failed (exit 1) and where
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "1 job(s) of the multirun failed:" in proc.stderr
    assert "/2/error.txt: " in proc.stderr and "bogus" in proc.stderr
    parents, children = sweep_runs(client)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert {r.data.tags[MLFLOW_PARENT_RUN_ID] for r in children} == {parent.info.run_id}
    assert {r.data.tags[SWEEP_ID] for r in children} == {parent.data.tags[SWEEP_ID]}
    for job, loss_type in enumerate(["dapo", "dr_grpo", "bogus"]):
        assert f"algorithm.loss_type={loss_type}" in children[job].data.tags[OVERRIDES].split()
        assert children[job].info.run_name == f"{job}-algorithm.loss_type={loss_type}"  # what sets it apart
        assert children[job].data.params["algorithm.loss_type"] == loss_type
    # the sweep folder is resolved before any job starts (it once needed Hydra's job-time resolvers)
    assert len(list((outputs / "multiruns").glob("*/[012]"))) == 3


def test_failed_job_is_recorded_with_its_error_and_the_others_finish(grid_sweep):
    _, client, _ = grid_sweep
    parents, children = sweep_runs(client)
    assert [r.info.status for r in children] == ["FINISHED", "FINISHED", "FAILED"]
    failed = children[2]
    assert "loss_type='bogus'" in failed.data.tags[ERROR]
    trace = client.download_artifacts(failed.info.run_id, "error.txt")
    assert "Traceback" in open(trace).read() and "check_training" in open(trace).read()  # refused before training
    assert all(ERROR not in r.data.tags for r in children[:2])

    parent = parents[0]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags["prewrite.sweep.jobs"], tags["prewrite.sweep.finished"], tags["prewrite.sweep.failed"]) == (
        "3",
        "2",
        "1",
    )
    best = max(children[:2], key=lambda r: r.data.metrics[OBJECTIVE])
    assert parent.data.metrics[OBJECTIVE] == best.data.metrics[OBJECTIVE]
    assert tags["prewrite.sweep.best_run_id"] in {r.info.run_id for r in children[:2]}
    jobs = json.load(open(client.download_artifacts(parent.info.run_id, "jobs.json")))
    assert [row[2] for row in jobs["data"]] == ["FINISHED", "FINISHED", "FAILED"]


def test_parallel_jobs_wrote_to_one_sqlite_store_at_once(grid_sweep):
    proc, client, outputs = grid_sweep
    _, children = sweep_runs(client)
    first, second = children[0].info, children[1].info
    assert first.start_time < second.end_time and second.start_time < first.end_time  # they overlapped
    logs = proc.stdout + proc.stderr + "".join(p.read_text() for p in outputs.glob("multiruns/*/*/train.log"))
    assert "database is locked" not in logs
    # every step of both runs arrived
    for run in children[:2]:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/reward")] == [1, 2]


def test_child_run_has_namespaced_metrics_system_metrics_plot_and_rewrites_table(grid_sweep):
    _, client, outputs = grid_sweep
    _, children = sweep_runs(client)
    run = children[0]
    prefixes = {k.split("/")[0] for k in run.data.metrics}
    assert {"train", "dev", "system"} <= prefixes
    assert client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")

    png = client.download_artifacts(run.info.run_id, "plots/reward_dev.png", str(outputs))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    table = json.load(open(client.download_artifacts(run.info.run_id, "rewrites.json", str(outputs))))
    assert table["columns"][:5] == ["step", "rewrite", "reward", "dev_score", "split"]
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    dev = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "dev/accuracy")}
    assert {r["step"]: r["dev_score"] for r in rows if r["split"] == "dev"} == dev
    assert all(r["dev_score"] is None and r["reward"] is not None for r in rows if r["split"] == "train")
    assert run.data.metrics[OBJECTIVE] == max(dev.values())


def test_optuna_sweep_maximises_the_dev_metric_train_returns(tmp_path, tiny_models):
    cmd = [
        sys.executable, "-m", "prewrite.train", "-m", "sweep=optuna", "hydra/launcher=parallel",
        "hydra.sweeper.n_trials=2", *TINY_TRAINING, *tiny_models, f"paths.outputs_dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parents, children = sweep_runs(client)
    assert len(parents) == 1 and [r.info.status for r in children] == ["FINISHED", "FINISHED"]
    for run in children:  # each trial a point of conf/sweep/optuna.yaml's search space
        assert 1e-6 <= float(run.data.params["algorithm.learning_rate"]) <= 1e-4
        assert 0.0 <= float(run.data.params["algorithm.beta"]) <= 0.1
        assert run.data.params["reward.reward_funcs"] in ("['accuracy']", "['f1']")
        assert math.isfinite(run.data.metrics[OBJECTIVE])

    results = yaml.safe_load(next((tmp_path / "multiruns").glob("*/optimization_results.yaml")).read_text())
    assert results["best_value"] == max(r.data.metrics[OBJECTIVE] for r in children)
    parent = parents[0]
    assert parent.data.metrics[OBJECTIVE] == results["best_value"]
    assert parent.data.tags["prewrite.sweep.sweeper"] == "OptunaSweeper"
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
