"""Sweep definitions and launchers compose; the sweep's parent run, the jobs' child runs and a failed
job's record (prewrite.sweep, driven directly); a failing job stops a single run but not a sweep."""

import atexit
import json
import math
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import OmegaConf, open_dict

from prewrite import sweep
from tests.conftest import CONF, DEFAULT_EXPERIMENT, run_at_once

GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(
    "name, sweeper",
    [("grid_reward_beta", "BasicSweeper"), ("sst2_constrained_tune", "BasicSweeper"), ("optuna", "OptunaSweeper")],
)
def test_sweep_definitions_search_real_config_keys(name, sweeper):
    cfg = compose_with_hydra(f"sweep={name}")
    assert cfg.hydra.sweeper._target_.endswith(sweeper)
    params = cfg.hydra.sweeper.params
    assert params
    for key in params:  # each dimension is a config group or a key of the training config
        assert key in GROUPS or OmegaConf.select(cfg, key, default="missing") != "missing", key


def test_optuna_definition_maximises_and_tolerates_failed_trials():
    sweeper = compose_with_hydra("sweep=optuna").hydra.sweeper
    assert sweeper.direction == "maximize"  # the objective is a dev score
    assert sweeper.max_failure_rate == 1.0
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"


def test_launchers_compose():
    parallel = compose_with_hydra("hydra/launcher=parallel").hydra.launcher
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2
    cfg = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.launcher.submitit_folder.startswith(cfg.hydra.sweep.dir)  # on the filesystem the jobs share


@pytest.fixture
def sweep_env(tmp_path):
    """A sweep's parent created by the callback, and a function that enters job `num` (its Hydra
    config set as a launcher would, the job's own override `seed=<num>`) and runs `train` through
    run_job."""
    base = [f"paths.outputs_dir={tmp_path}", f"hydra.sweep.dir={tmp_path}/sweep"]
    master = compose_with_hydra(*base)
    callback = sweep.SweepRun()
    callback.on_multirun_start(master)

    def run(num, train):
        cfg = compose_with_hydra(*base, f"seed={num}")
        with open_dict(cfg):
            cfg.hydra.job.num = num
            cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / str(num))
        (tmp_path / "sweep" / str(num)).mkdir()
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        return sweep.run_job(train, cfg)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    yield master, callback, run, client, tmp_path
    atexit.unregister(callback._fail_if_open)  # its store is gone by the time pytest exits


def open_run(cfg, tags):
    """What training does first: a run in the configured experiment, with the job's tags."""
    client = MlflowClient(cfg.logger.tracking_uri)
    exp = client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id
    return client, client.create_run(exp, tags=tags | {MLFLOW_RUN_NAME: cfg.logger.run_name}).info.run_id


def test_jobs_are_children_of_one_parent_and_failures_are_recorded(sweep_env):
    master, callback, run, client, tmp_path = sweep_env

    def finishes(cfg, tags):
        c, run_id = open_run(cfg, tags)
        c.log_metric(run_id, "dev/best/accuracy", 0.75)
        c.set_terminated(run_id)
        return 0.75

    def fails_in_training(cfg, tags):
        open_run(cfg, tags)
        raise RuntimeError("diverged")

    def fails_before_a_run(cfg, tags):
        raise FileNotFoundError("no such model")

    assert run(0, finishes) == 0.75
    assert run(1, fails_in_training) is None  # no objective: the sweep goes on
    assert run(2, fails_before_a_run) is None
    with pytest.raises(SystemExit) as stop:  # the multirun exits non-zero once its parent is closed
        callback.on_multirun_end(master)
    assert stop.value.code == 1

    info = json.loads((tmp_path / "sweep" / sweep.SWEEP_FILE).read_text())
    runs = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])
    parent = client.get_run(info["parent_run_id"])
    children = sorted((r for r in runs if r.info.run_id != parent.info.run_id), key=lambda r: r.data.tags[sweep.JOB])
    assert len(runs) == 4  # the failed jobs' runs were reused or made once each
    assert all(r.data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id for r in children)
    assert all(r.data.tags[sweep.SWEEP_ID] == parent.data.tags[sweep.SWEEP_ID] for r in children)
    assert [r.info.run_name for r in children] == ["0-seed=0", "1-seed=1", "2-seed=2"]
    assert [r.info.status for r in children] == ["FINISHED", "FAILED", "FAILED"]
    assert children[1].data.tags[sweep.ERROR] == "RuntimeError: diverged"
    assert children[2].data.tags[sweep.ERROR] == "FileNotFoundError: no such model"
    trace = open(client.download_artifacts(children[1].info.run_id, "error.txt")).read()
    assert "fails_in_training" in trace and (tmp_path / "sweep" / "1" / "error.txt").read_text() == trace

    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["dev/best/accuracy"] == 0.75
    assert parent.data.tags["prewrite.sweep.best_run_id"] == children[0].info.run_id
    assert (parent.data.tags["prewrite.sweep.finished"], parent.data.tags["prewrite.sweep.failed"]) == ("1", "2")
    assert parent.data.tags[sweep.OVERRIDES].split() == list(master.hydra.overrides.task)


def test_a_sweep_whose_jobs_all_failed_is_failed(sweep_env):
    master, callback, run, client, tmp_path = sweep_env
    run(0, lambda cfg, tags: math.sqrt(-1))
    with pytest.raises(SystemExit):
        callback.on_multirun_end(master)
    parent = json.loads((tmp_path / "sweep" / sweep.SWEEP_FILE).read_text())["parent_run_id"]
    assert client.get_run(parent).info.status == "FAILED"


def test_a_sweep_that_stops_early_leaves_its_parent_failed_not_running(sweep_env):
    _, callback, _, client, tmp_path = sweep_env
    callback._fail_if_open()  # what runs at exit when the sweeper raised before on_multirun_end
    parent = client.get_run(json.loads((tmp_path / "sweep" / sweep.SWEEP_FILE).read_text())["parent_run_id"])
    assert parent.info.status == "FAILED" and sweep.ERROR in parent.data.tags


def test_a_failing_job_stops_a_single_run_but_not_a_sweep(tmp_path):
    train = [sys.executable, "-m", "prewrite.train"]
    bad = ["task=jsonl", "task.path=/nonexistent/rows.jsonl"]
    single, multi = run_at_once(  # each in its own outputs folder
        [*train, *bad, f"paths.outputs_dir={tmp_path / 'single'}"],
        [*train, "-m", *bad, "seed=0,1", f"paths.outputs_dir={tmp_path}"],
    )
    assert single.returncode != 0 and "Task data file not found" in single.stderr
    # every job ran (the sweep went on), then the multirun exited non-zero, naming the failed jobs
    assert multi.returncode == 1 and "2 job(s) of the multirun failed" in multi.stderr, multi.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("prewrite-jsonl").experiment_id])
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    assert len(runs) == 3 and [r.info.status for r in runs] == ["FAILED"] * 3  # both jobs and so the sweep
    assert all("Task data file not found" in r.data.tags[sweep.ERROR] for r in children)
