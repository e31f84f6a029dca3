"""Multi-stage training: each stage starts from the base rewriter and rewrites the previous stage's best."""

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tests.conftest import DEFAULT_EXPERIMENT, ROOT

pytestmark = pytest.mark.integration


def test_two_stages_chain_their_best_rewrites_and_log_child_runs(tmp_path, tiny_models):
    cmd = [
        sys.executable, "-m", "prewrite.train", "stages=2",
        "steps=2", "eval_every=1", "examples_per_step=2", "dev_examples=4",
        "algorithm.num_generations=2", "algorithm.max_completion_length=12",
        f"paths.outputs_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run",
        "trainer.enable_progress_bar=false", "log_rewriter_to_mlflow=false", "save_checkpoints=false", *tiny_models,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    first = json.loads((run / "stage0" / "result.json").read_text())
    second_rows = [json.loads(line) for line in (run / "stage1" / "rewrites.jsonl").read_text().splitlines()]
    initial = next(r for r in second_rows if r["split"] == "initial")
    # stage 1 rewrites what stage 0 selected: its best rewrite only if that beat stage 0's instruction on dev
    assert initial["rewrite"] == first["selected"]
    assert first["selected_is_initial"] == (first["score"] <= first["initial_score"])
    # ... which scores on dev what it scored in stage 0
    assert initial["accuracy"] == (first["initial_score"] if first["selected_is_initial"] else first["score"])
    info = json.loads((run / "stage1" / "rewriter" / "prewrite.json").read_text())
    assert info["instruction"] == first["selected"]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    parent = (run / "mlflow_run_id").read_text().strip()
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent]
    assert sorted(r.data.tags["prewrite.stage"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 3
    assert (
        client.get_run(parent).data.metrics["dev/accuracy"]
        == json.loads((run / "stage1" / "result.json").read_text())["score"]
    )
