"""Faults that used to lose work: a kill, a stop signal, a non-finite update, torn state files, a kill between a
checkpoint and its metrics, a key sent to the wrong host, bad data files, a full disk."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow import MlflowClient

from prewrite import faults, fsio
from prewrite.backends.openai import OpenAIBackend
from prewrite.callbacks import LastCheckpoint, RewritesTable, check_finite
from prewrite.runs import check_same_settings
from prewrite.tasks.io import read_jsonl, read_rows
from prewrite.tasks.task import load_task
from tests.conftest import (
    DEFAULT_EXPERIMENT,
    KILL_IN_WINDOW,
    ROOT,
    assert_same_histories,
    mlflow_histories,
)
from tests.fault_server import FaultServer

ARGS = [
    "steps=5", "eval_every=2", "examples_per_step=2", "dev_examples=4",
    "algorithm.num_generations=3", "algorithm.max_completion_length=12",
    "trainer.enable_progress_bar=false", "log_rewriter_to_mlflow=false", "system_metrics_interval_s=null",
]  # fmt: skip
SAME = ["train/reward", "train/loss", "train/kl", "train/completion_length", "dev/accuracy", "dev/reward"]


@pytest.fixture(scope="module")
def command(tiny_models):
    """The training command line, on the tiny models: what is tested is the resume, not the models."""

    def command(outputs, run_dir, *extra, prelude=None):
        start = ["-c", f"{prelude}\nimport runpy; runpy.run_module('prewrite.train', run_name='__main__')"]
        return [sys.executable, *(start if prelude else ["-m", "prewrite.train"]), *ARGS, *tiny_models,
                f"paths.outputs_dir={outputs}", f"hydra.run.dir={run_dir}", *extra]  # fmt: skip

    return command


@pytest.fixture(scope="module")
def clean(tmp_path_factory, command):
    """The uninterrupted run the interrupted ones must reproduce."""
    out = tmp_path_factory.mktemp("clean")
    proc = subprocess.run(command(out, out / "run"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return mlflow_histories(out, SAME)[1]


@pytest.mark.integration
def test_sigterm_mid_step_checkpoints_marks_killed_and_resumes_exactly(tmp_path, clean, command):
    run_dir = tmp_path / "run"
    victim = subprocess.Popen(command(tmp_path, run_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 600
        while not (run_dir / "checkpoints" / "last.ckpt").exists():  # the step-2 checkpoint: step 3 runs now
            assert time.time() < deadline and victim.poll() is None, "no checkpoint at step 2"
            time.sleep(0.01)
        victim.send_signal(signal.SIGTERM)  # step 3 starts right after the checkpoint: the signal lands inside it
        sent = time.time()
        _, err = victim.communicate(timeout=300)
    finally:
        if victim.poll() is None:
            victim.kill()
    waited = time.time() - sent
    assert victim.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert b"Stopped by SIGTERM" in err and f"hydra.run.dir={run_dir}".encode() in err
    print(f"stopped {waited:.1f} s after SIGTERM")
    runs, partial = mlflow_histories(tmp_path, SAME)
    assert runs[0].info.status == "KILLED"
    # what MLflow holds is what the checkpoint written at the stop covers: nothing is held back any more
    assert max(s for s, _ in partial["train/loss"]) >= 2
    assert not list(run_dir.rglob("*.tmp"))  # no temporary state file left behind

    proc = subprocess.run(command(tmp_path, run_dir), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_histories(tmp_path, clean, nan_ok=True, rel=0, abs=0)


# With save_every=1 the first checkpoint is step 1's, saved between dev evaluations: the resume starts from it.
@pytest.mark.integration
def test_a_kill_after_a_checkpoint_before_its_metrics_resumes_with_identical_metrics(tmp_path, clean, command):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        command(tmp_path, run_dir, "save_every=1", prelude=KILL_IN_WINDOW), cwd=ROOT, capture_output=True, timeout=900
    )
    assert proc.returncode == -signal.SIGKILL
    runs, partial = mlflow_histories(tmp_path, SAME)
    assert partial["train/loss"] == []  # killed inside the window: the step-1 metrics never reached MLflow
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, mmap=True)
    assert checkpoint["prewrite"]["rollout_step"] == 1  # saved by save_every, before any dev evaluation
    assert runs[0].info.status == "RUNNING"  # killed: never finalized
    proc = subprocess.run(
        command(tmp_path, run_dir, "save_every=1"), cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_histories(tmp_path, clean, nan_ok=True, rel=0, abs=0)  # one MLflow run, every step once
    rows = [json.loads(line) for line in (run_dir / "rewrites.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if r["split"] == "train") == [s for s in range(1, 6) for _ in range(3)]


def test_stop_signals_are_recorded_until_a_safe_point(monkeypatch):
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        monkeypatch.setattr(faults, "_received", None)
        with faults.stop_on_signals():
            os.kill(os.getpid(), signum)  # a real signal: no exception, the process goes on
            time.sleep(0.05)
            assert faults.requested() == signum
            trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda d, all: d))
            assert faults.agreed_stop(trainer) == signum
        assert signal.getsignal(signum) is not faults._handle  # the previous handler is back
    monkeypatch.setattr(faults, "_received", None)


def test_a_stopped_comparison_marks_its_mlflow_run_killed_and_stops_between_candidates(
    compose_config, tmp_path, monkeypatch
):
    from prewrite import compare
    from prewrite.selection import DevSelection

    cfg = compose_config("compare", "seeds=[0,1]", f"paths.outputs_dir={tmp_path}")
    monkeypatch.setattr(compare, "build_backends", lambda *a: [None])  # the stop comes before any scoring
    monkeypatch.setattr(faults, "_received", None)
    seeds = []

    def run_seed(cfg, seed, *args):
        seeds.append(seed)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the first seed runs
        time.sleep(0.05)
        faults.raise_if_requested()

    monkeypatch.setattr(compare, "run_seed", run_seed)
    with pytest.raises(faults.StopRequested):
        compare.compare(cfg)
    assert seeds == [0]
    client = MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["prewrite.method"] == "compare"
    assert signal.getsignal(signal.SIGTERM) is not faults._handle

    selection = DevSelection(scorer=None, dev_rows=[{}], metric="accuracy")  # stopped before scoring
    with pytest.raises(faults.StopRequested):
        selection.score(["Classify the sentiment."])
    monkeypatch.setattr(faults, "_received", None)


# ---- non-finite values: injected NaN loss through a real in-process training ----


@pytest.mark.integration
def test_nonfinite_loss_skips_the_update_and_stops_after_n_in_a_row(compose_train, tmp_path, monkeypatch, tiny_models):
    import prewrite.algorithms.updates
    import prewrite.lightning_module
    from prewrite.training import train

    real_loss = prewrite.algorithms.updates.grpo_loss
    nan_steps: set[int] = {2}

    def loss_with_nan(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        module = current["module"]
        return (loss * float("nan"), stats) if module.rollout_step in nan_steps else (loss, stats)

    current = {}
    real_init = prewrite.lightning_module.PRewriteModule.__init__

    def remember(self, *a, **kw):
        real_init(self, *a, **kw)
        current["module"] = self

    monkeypatch.setattr(prewrite.algorithms.updates, "grpo_loss", loss_with_nan)
    monkeypatch.setattr(prewrite.lightning_module.PRewriteModule, "__init__", remember)
    tiny = ["steps=3", "eval_every=3", "examples_per_step=2", "dev_examples=2", "algorithm.num_generations=2",
            "algorithm.max_completion_length=6", "save_checkpoints=false", "log_rewriter_to_mlflow=false",
            "trainer.enable_progress_bar=false", "system_metrics_interval_s=null", "max_skipped_updates_in_a_row=2",
            f"paths.outputs_dir={tmp_path}", *tiny_models]  # fmt: skip
    train(compose_train(*tiny))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    skipped = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/skipped_updates")]
    assert skipped == [(1, 0.0), (2, 1.0), (3, 1.0)]
    assert all(torch.isfinite(p).all() for p in current["module"].parameters())  # the NaN update never applied
    loss = dict((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert loss[3] == loss[3]  # finite again after the skipped one

    nan_steps.update({1, 2, 3})  # every update NaN: the run stops after two in a row, with a clear error
    with pytest.raises(faults.NonFiniteError, match=r"steps \[1, 2\] skipped in a row: non-finite loss or gradient"):
        train(compose_train(*tiny, f"paths.run_dir={tmp_path}/second"))


@pytest.mark.integration
def test_a_task_model_outage_stops_with_a_checkpoint_and_a_relaunch_resumes(
    compose_train, tmp_path, monkeypatch, tiny_llama
):
    from prewrite.training import train

    real_save = LastCheckpoint.save
    with FaultServer(lifetime_s=600) as server:

        def save_then_go_down(self, *args):  # the server goes down right after the step-1 checkpoint
            real_save(self, *args)
            server.default = "500"

        monkeypatch.setattr(LastCheckpoint, "save", save_then_go_down)
        args = [
            "steps=2", "eval_every=1", "examples_per_step=2", "dev_examples=2", "algorithm.num_generations=2",
            "algorithm.max_completion_length=6", "log_rewriter_to_mlflow=false", "trainer.enable_progress_bar=false",
            "system_metrics_interval_s=null", "task_backend=openai", f"task_backend.base_url={server.base_url}",
            "task_backend.outage_patience_s=0.5", "task_backend.backoff_max_s=0.1",
            f"rewriter.model_name_or_path={tiny_llama}",
            f"paths.outputs_dir={tmp_path}", f"paths.run_dir={tmp_path}/run",
        ]  # fmt: skip
        with pytest.raises(faults.TaskModelDown) as info:
            train(compose_train(*args))
        assert info.value.exit_code == 75
        assert f"{server.base_url}/chat/completions" in str(info.value) and "outage_patience_s=0.5" in str(info.value)
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        (run,) = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
        assert run.info.status == "KILLED" and (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1]

        monkeypatch.setattr(LastCheckpoint, "save", real_save)
        server.default = "ok"  # back up: the same command resumes at step 2
        train(compose_train(*args))
    (run,) = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]


def test_infinite_reward_skips_the_update_and_nonfinite_weights_are_never_checkpointed():
    layer = torch.nn.Linear(2, 2)
    check_finite(layer)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(faults.NonFiniteError, match="not checkpointing non-finite weights"):
        check_finite(layer)


# ---- state files: atomic and durable ----


def test_state_files_are_replaced_atomically_and_fsynced(tmp_path, monkeypatch, compose_train):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    check_same_settings(tmp_path / "run", compose_train())
    module = SimpleNamespace(rewrite_rows=[{"step": 1, "split": "train", "rewrite": "r", "reward": 1.0}], monitor="a")
    RewritesTable(str(tmp_path / "run")).flush(SimpleNamespace(is_global_zero=True, loggers=[]), module)
    assert any(".settings.json." in s for s in synced) and any(".rewrites.jsonl." in s for s in synced)
    assert str(tmp_path / "run") in synced  # the folder: the rename itself is durable
    assert json.loads((tmp_path / "run" / "settings.json").read_text())

    # a write cut short (here: the rename fails) leaves the previous content, and no temporary file
    path = tmp_path / "result.json"
    fsio.atomic_write_text(path, '{"score": 1}')
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        fsio.atomic_write_text(path, '{"score": 2}')
    assert path.read_text() == '{"score": 1}' and [p.name for p in tmp_path.iterdir()] == ["result.json", "run"]


def test_a_failed_checkpoint_save_keeps_the_previous_one_and_warns_early(tmp_path, monkeypatch, caplog):
    callback = LastCheckpoint(str(tmp_path))
    (tmp_path / "last.ckpt").write_bytes(b"previous")
    logger_flushed = []

    def save_checkpoint(path):
        Path(path).write_bytes(b"new, half written")
        raise OSError(28, "No space left on device")

    trainer = SimpleNamespace(
        is_global_zero=True, save_checkpoint=save_checkpoint, loggers=[], strategy=SimpleNamespace(barrier=lambda: 0)
    )
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(free=3))
    callback.save(trainer, torch.nn.Linear(2, 2))  # the run goes on
    assert (tmp_path / "last.ckpt").read_bytes() == b"previous" and not (tmp_path / "last.ckpt.tmp").exists()
    assert "a checkpoint (the previous one is kept if it fails) needs about" in caplog.text
    assert "Could not save the checkpoint" in caplog.text
    assert logger_flushed == []


@pytest.mark.integration
def test_a_full_disk_at_the_rewriters_mlflow_copy_fails_nothing_and_a_finished_run_can_drop_its_checkpoint(
    compose_train, tmp_path, monkeypatch, tiny_models, caplog
):
    from prewrite.training import train

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowClient, "log_artifacts", disk_full)
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(free=10**6))
    run_dir = tmp_path / "run"
    args = ["steps=2", "eval_every=1", "examples_per_step=2", "dev_examples=2", "algorithm.num_generations=2",
            "algorithm.max_completion_length=6", "trainer.enable_progress_bar=false", "system_metrics_interval_s=null",
            "keep_checkpoint_after_fit=false", f"paths.outputs_dir={tmp_path}", f"paths.run_dir={run_dir}",
            *tiny_models]  # fmt: skip
    saved = []
    real_save = LastCheckpoint.save
    monkeypatch.setattr(LastCheckpoint, "save", lambda cb, *a: (real_save(cb, *a), saved.append(cb.path.exists())))
    best = train(compose_train(*args))
    assert not math.isnan(best) and saved == [True, True]  # a dev score, and checkpointed during training
    assert "this run (the rewriter, a checkpoint, its MLflow copy) needs about" in caplog.text  # before training
    assert "Could not copy the rewriter to MLflow run" in caplog.text and str(run_dir / "rewriter") in caplog.text
    assert (run_dir / "result.json").exists() and (run_dir / "rewriter" / "prewrite.json").exists()
    assert not (run_dir / "checkpoints").exists()  # dropped once finished, as asked
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["prewrite.rewriter_artifact"].startswith("not logged")


# ---- the API key goes only where it belongs ----


def test_api_key_is_not_sent_to_a_local_server_by_default(monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-real-key")
    with FaultServer() as server:
        OpenAIBackend("m", base_url=server.base_url).generate(["hello"])
        OpenAIBackend("m", base_url=server.base_url, api_key_hosts=["127.0.0.1"]).generate(["listed"])
        OpenAIBackend("m", base_url=server.base_url, send_api_key=True).generate(["forced"])
    assert [r.authorization for r in server.requests] == [None] + ["Bearer sk-users-real-key"] * 2
    assert "$OPENAI_API_KEY is set but not sent to 127.0.0.1" in caplog.text
    assert "sk-users-real-key" not in caplog.text


# ---- bad data files ----


def test_bad_data_files_are_named_with_line_and_byte(tmp_path):
    latin1 = tmp_path / "rows.jsonl"
    latin1.write_bytes(b'{"input": "ok", "output": "a"}\n{"input": "caf\xe9", "output": "b"}\n')
    with pytest.raises(ValueError, match=rf"{latin1}:2: not UTF-8 \(byte 0xe9 at byte offset 45"):
        read_jsonl(latin1)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"input": "x", "output": "y"}\n')
    assert read_jsonl(bom) == [{"input": "x", "output": "y"}]
    bom_csv = tmp_path / "bom.csv"
    bom_csv.write_bytes(b"\xef\xbb\xbfinput,output\nx,y\n")
    assert read_rows(bom_csv, required=["input", "output"]) == [{"input": "x", "output": "y"}]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=rf"{empty}: not a readable CSV file"):
        read_rows(empty)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text('input,output\n"unclosed,y\n')
    with pytest.raises(ValueError, match=rf"{ragged}: not a readable CSV file"):
        read_rows(ragged)
    blank = tmp_path / "blank.csv"
    blank.write_text("instruction,input,output\n,x,y\n,z,w\n,u,v\n,s,t\n")
    cfg = {"name": "jsonl", "source": "file", "path": str(blank), "dev_size": 1, "test_size": 1, "split_seed": 0}
    with pytest.raises(ValueError, match=rf"{blank}: column 'instruction' is empty on every row"):
        load_task(cfg)
