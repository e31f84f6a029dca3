"""Sweeps in MLflow: one parent run per Hydra multirun, one child run per job, failed jobs recorded.

The parent is created once, in the launching process (`SweepRun.on_multirun_start`, a Hydra
callback), before any job starts; that also creates the store, so parallel jobs never race to
initialise it. Its id reaches the jobs through `sweep.json` in the sweep folder, which every
launcher shares with its jobs (joblib workers, SLURM nodes). A job (`run_job`) tags its run as the
parent's child and, if it raises, records the error on that run and returns no objective, so the
sweep goes on. At the end the parent gets the best objective and the job counts, and a multirun in
which jobs failed lists them and exits 1 (`multirun_fails_on_job_error`).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from omegaconf import DictConfig, OmegaConf

from prewrite import faults, fsio
from prewrite.loggers import mlflow_experiment

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # in the sweep folder: the parent run the jobs attach to
ERROR_FILE = "error.txt"  # in a failed job's folder and its MLflow run: the traceback
SWEEP_ID = "prewrite.sweep_id"
OVERRIDES = "prewrite.overrides"
JOB = "prewrite.sweep.job"
ERROR = "prewrite.error"


def objective_metric(optimized_metric: str) -> str:
    """The MLflow metric that holds a training run's objective, the best value of `optimized_metric`
    on dev (what train() returns): `dev/accuracy` -> `dev/best/accuracy`."""
    return "dev/best/" + optimized_metric.removeprefix("dev/")


class SweepRun(Callback):
    """Hydra callback (conf/hydra/default.yaml): the sweep's parent MLflow run, created before the
    first job and closed after the last one."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent: str | None = None
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()  # error files older than this are from an earlier multirun in the folder
        logger = config.logger
        if not logger.get("_target_"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_id = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.client = MlflowClient(logger.tracking_uri)
        exp_id = mlflow_experiment(self.client, logger)
        overrides = list(config.hydra.overrides.task)
        self.parent = self.client.create_run(
            exp_id,
            tags={
                MLFLOW_RUN_NAME: f"sweep-{logger.run_name}",
                SWEEP_ID: sweep_id,
                OVERRIDES: " ".join(overrides)[:MAX_TAG_VAL_LENGTH],
                "prewrite.sweep.dir": str(sweep_dir),
                "prewrite.sweep.sweeper": config.hydra.sweeper._target_.rsplit(".", 1)[-1],
                "prewrite.sweep.launcher": config.hydra.launcher._target_.rsplit(".", 1)[-1],
            },
        ).info.run_id
        # the search space and how it is run, as the sweep's own record
        sweep_cfg = {k: OmegaConf.to_container(config.hydra[k]) for k in ("sweeper", "launcher")}
        self.client.log_text(self.parent, OmegaConf.to_yaml({"overrides": overrides, **sweep_cfg}), "sweep.yaml")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "sweep_id": sweep_id,
            "parent_run_id": self.parent,
            "tracking_uri": logger.tracking_uri,
            "experiment_name": logger.experiment_name,
            # what every job shares; a job's other overrides are its point of the search space
            "fixed_keys": [
                o.get_key_element()
                for o in OverridesParser.create().parse_overrides(overrides)
                if not o.is_sweep_override()
            ],
        }
        fsio.atomic_write_text(sweep_dir / SWEEP_FILE, json.dumps(info, indent=2))
        # A sweeper that raises skips on_multirun_end; the parent must not stay RUNNING then.
        atexit.register(self._fail_if_open)
        log.info("Sweep %s: MLflow parent run %s", sweep_id, self.parent)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.parent is not None:
            self._close_parent(config)
        _exit_if_jobs_failed(config, self.started)

    def _close_parent(self, config: DictConfig) -> None:
        client, parent = self.client, self.parent
        exp_id = client.get_run(parent).info.experiment_id
        children = client.search_runs([exp_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'", max_results=50000)
        key = objective_metric(config.optimized_metric)
        finished = [r for r in children if r.info.status == "FINISHED"]
        failed = [r for r in children if r.info.status == "FAILED"]
        scored = [r for r in finished if not math.isnan(r.data.metrics.get(key, math.nan))]
        tags = {"prewrite.sweep.jobs": len(children), "prewrite.sweep.finished": len(finished)}
        tags["prewrite.sweep.failed"] = len(failed)
        if scored:
            best = max(scored, key=lambda r: r.data.metrics[key])
            client.log_metric(parent, key, best.data.metrics[key])
            tags |= {"prewrite.sweep.best_run_id": best.info.run_id, "prewrite.sweep.best_run": best.info.run_name}
        for k, v in tags.items():
            client.set_tag(parent, k, str(v))
        jobs = sorted(children, key=lambda r: int(r.data.tags.get(JOB, -1)))
        table = {
            "job": [int(r.data.tags.get(JOB, -1)) for r in jobs],
            "run": [r.info.run_name for r in jobs],
            "status": [r.info.status for r in jobs],
            key: [r.data.metrics.get(key) for r in jobs],
            "overrides": [r.data.tags.get(OVERRIDES, "") for r in jobs],
            "error": [r.data.tags.get(ERROR) for r in jobs],
        }
        client.log_table(parent, table, "jobs.json")
        optuna_results = Path(config.hydra.sweep.dir) / "optimization_results.yaml"
        if optuna_results.exists():
            client.log_artifact(parent, str(optuna_results))
        client.set_terminated(parent, "FINISHED" if finished else "FAILED")
        self.parent = None
        log.info("Sweep finished: %d of %d jobs finished, %d failed", len(finished), len(children), len(failed))

    def _fail_if_open(self) -> None:
        parent, self.parent = self.parent, None
        if parent is None:
            return
        if faults.requested():  # stopped by a signal: the stopped job is resumable, the sweep is KILLED
            self.client.set_terminated(parent, "KILLED")
            return
        self.client.set_tag(parent, ERROR, "the sweeper stopped with an error (see the console)")
        self.client.set_terminated(parent, "FAILED")


def _exit_if_jobs_failed(config: DictConfig, since: float) -> None:
    """Scripts and CI see a multirun's failed jobs: each left `error.txt` in its folder (run_job)."""
    sweep_dir = Path(config.hydra.sweep.dir)
    errors = sorted(p for p in sweep_dir.rglob(ERROR_FILE) if p.stat().st_mtime >= since)
    if not errors or not config.get("multirun_fails_on_job_error", True):
        return
    lines = [f"  {os.path.relpath(p)}: {p.read_text().strip().splitlines()[-1]}" for p in errors]
    print(f"{len(errors)} job(s) of the multirun failed:\n" + "\n".join(lines), file=sys.stderr)
    sys.exit(1)


def _sweep_info() -> dict | None:
    path = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def run_job(train: Callable[[DictConfig, dict[str, str]], float], cfg: DictConfig) -> float | None:
    """Runs one sweep job: `train(cfg, tags)` as a child of the sweep's parent run. A job that raises
    is recorded as FAILED (error tag, traceback artifact, `error.txt` in its folder) and returns None,
    no objective: the basic sweeper ignores returns, the Optuna sweeper marks the trial failed (it
    tolerates `max_failure_rate` of them), and the sweep goes on."""
    hydra = HydraConfig.get()
    info = _sweep_info() if cfg.logger.get("_target_") else None
    tags: dict[str, str] = {}
    if info:
        overrides = list(hydra.overrides.task)
        varying = [o for o in overrides if o.split("=", 1)[0] not in info["fixed_keys"]]
        # every job in the parent's experiment and store, so the UI nests it under the parent
        cfg.logger.experiment_name = info["experiment_name"]
        cfg.logger.tracking_uri = info["tracking_uri"]
        cfg.logger.run_name = f"{hydra.job.num}-{' '.join(varying)}"[:250]
        tags = {
            MLFLOW_PARENT_RUN_ID: info["parent_run_id"],
            SWEEP_ID: info["sweep_id"],
            JOB: str(hydra.job.num),
            OVERRIDES: " ".join(overrides)[:MAX_TAG_VAL_LENGTH],
        }
    try:
        return train(cfg, tags)
    except faults.StopRequested:
        raise  # not a failed job: the multirun stops here, and the job resumes from its checkpoint
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        trace = traceback.format_exc()
        log.error("Job %d failed (%s); the sweep goes on.\n%s", hydra.job.num, error, trace)
        run_dir = Path(hydra.runtime.output_dir)
        fsio.atomic_write_text(run_dir / ERROR_FILE, trace)
        if info:
            _record_failure(cfg, tags, error, trace)
        return None


def _record_failure(cfg: DictConfig, tags: dict[str, str], error: str, trace: str) -> None:
    """The failed job's MLflow run, FAILED with its error: the run training opened, or one made now
    for a job that failed before it had one (a bad config, a missing model)."""
    client = MlflowClient(cfg.logger.tracking_uri)
    exp_id = mlflow_experiment(client, cfg.logger)
    mine = f"tags.`{SWEEP_ID}` = '{tags[SWEEP_ID]}' and tags.`{JOB}` = '{tags[JOB]}'"
    runs = client.search_runs([exp_id], mine)
    if runs:
        run_id = runs[0].info.run_id
    else:
        run_id = client.create_run(exp_id, tags=tags | {MLFLOW_RUN_NAME: cfg.logger.run_name}).info.run_id
        # what set this job apart, as params, as a job that got as far as training logs them
        overrides = [o.split("=", 1) for o in HydraConfig.get().overrides.task if "=" in o]
        client.log_batch(run_id, params=[Param(k.lstrip("+~"), v[:MAX_PARAM_VAL_LENGTH]) for k, v in overrides])
    client.set_tag(run_id, ERROR, error[:MAX_TAG_VAL_LENGTH])
    client.log_text(run_id, trace, ERROR_FILE)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
