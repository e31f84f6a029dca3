"""A training killed with SIGKILL and re-launched in its folder resumes from its last checkpoint and
logs the same per-step metrics as an uninterrupted run, each step exactly once, in one MLflow run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

ARGS = [
    "steps=5", "eval_every=2", "examples_per_step=2", "dev_examples=4",
    "algorithm.num_generations=3", "algorithm.max_completion_length=12",
    "trainer.enable_progress_bar=false", "log_rewriter_to_mlflow=false",
]  # fmt: skip
SAME = ["train/reward", "train/loss", "train/kl", "train/completion_length", "dev/accuracy", "dev/reward"]


def command(outputs, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "prewrite.train",
        *ARGS,
        f"paths.outputs_dir={outputs}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def histories(outputs):
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("prewrite-sst2").experiment_id])
    return runs, {k: [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, k)] for k in SAME}


def test_killed_run_resumes_with_identical_metrics_and_one_mlflow_run(tmp_path):
    clean_out, killed_out = tmp_path / "clean", tmp_path / "killed"
    proc = subprocess.run(command(clean_out, clean_out / "run"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, expected = histories(clean_out)

    run_dir = killed_out / "run"
    victim = subprocess.Popen(
        command(killed_out, run_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # dev/accuracy at step 2 reaches MLflow only once the step-2 checkpoint is written
        deadline = time.time() + 600
        while time.time() < deadline:
            if (killed_out / "mlflow.db").exists() and (run_dir / "checkpoints" / "last.ckpt").exists():
                runs, got = histories(killed_out)
                if any(step == 2 for step, _ in got["dev/accuracy"]):
                    break
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint at step 2 within 10 minutes")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    runs, partial = histories(killed_out)
    assert runs[0].info.status == "RUNNING"  # killed: never finalized
    assert max(s for s, _ in partial["train/loss"]) == 2  # metrics after the checkpoint were held back

    proc = subprocess.run(command(killed_out, run_dir), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs, resumed = histories(killed_out)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in SAME:
        assert [s for s, _ in resumed[key]] == [s for s, _ in expected[key]], key  # every step exactly once
        assert [v for _, v in resumed[key]] == pytest.approx([v for _, v in expected[key]]), key
    rows = [json.loads(line) for line in (run_dir / "rewrites.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if r["split"] == "train") == [s for s in range(1, 6) for _ in range(3)]
