"""Lightning callbacks: the rewrites table and the reward/dev plot (MLflow and the run folder), MLflow
system metrics, the resumable last checkpoint, and the stop on a signal."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from prewrite import distributed, faults, fsio, plots
from prewrite.loggers import CheckpointedMLFlowLogger

log = logging.getLogger(__name__)


def _mlflow_loggers(trainer: L.Trainer) -> list[MLFlowLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)] if trainer.is_global_zero else []


class RewritesTable(L.Callback):
    """Writes the module's whole rewrites table after each dev evaluation and at the end of training.

    The table is rewritten, not appended to (MLflow's log_table appends): the rows live in the
    module's checkpoint, so after a resume the table holds each step exactly once. `dev_score` is
    the monitored dev metric of the greedy rewrite (split `dev`) and of the initial instruction
    (split `initial`), empty on sampled training rewrites. The leading columns are the ones the
    MLflow UI's table comparison groups by (the first) and compares (the second).
    """

    LEAD = ["step", "rewrite", "reward", "dev_score", "split"]

    def __init__(self, run_dir: str, artifact_file: str = "rewrites.json"):
        self.path = Path(run_dir) / "rewrites.jsonl"
        self.artifact_file = artifact_file

    def flush(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not module.rewrite_rows or not trainer.is_global_zero:
            return
        monitor = module.monitor
        rows = [r | {"dev_score": r.get(monitor) if r["split"] != "train" else None} for r in module.rewrite_rows]
        fsio.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        columns = self.LEAD + sorted({k for r in rows for k in r} - set(self.LEAD))
        table = pd.DataFrame([[r.get(k) for k in columns] for r in rows], columns=columns)
        for logger in _mlflow_loggers(trainer):
            _overwrite_table(logger, table, self.artifact_file)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.flush(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.flush(trainer, module)


def _overwrite_table(logger: MLFlowLogger, table: pd.DataFrame, artifact_file: str) -> None:
    """What MlflowClient.log_table writes (a JSON table the UI shows), replacing any earlier version."""
    client, run_id = logger.experiment, logger.run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / artifact_file
        table.to_json(path, orient="split", index=False)
        client.log_artifact(run_id, str(path))
    tags = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    if {"path": artifact_file, "type": "table"} not in tags:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*tags, {"path": artifact_file, "type": "table"}]))


class TimeEstimate(L.Callback):
    """Prints, once the first rollout step is done, how long the rest will take on this machine: the
    remaining steps at the first step's time, and the remaining dev evaluations at step 0's (the initial
    instruction and the first greedy rewrite scored on dev). Rank zero only."""

    def __init__(self, steps: int, eval_every: int):
        self.steps, self.eval_every = steps, eval_every
        self.times: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.times = {"start": time.perf_counter()}  # before the module's step-0 dev evaluation

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        self.times.setdefault("first_step", time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if "done" in self.times or not trainer.is_global_zero:
            return
        self.times["done"] = time.perf_counter()
        done_steps = module.rollout_step  # more than 1 after a resume
        step_s = self.times["done"] - self.times["first_step"]
        # step 0 scored two instructions on dev (the initial one and the first greedy rewrite), a later
        # evaluation scores one; a resumed run did no step-0 evaluation: count one as long as a step
        eval_s = (self.times["first_step"] - self.times["start"]) / 2 if done_steps == 1 else step_s
        left_steps = self.steps - done_steps
        left_evals = self.steps // self.eval_every - done_steps // self.eval_every
        total = left_steps * step_s + left_evals * eval_s
        print(
            f"Step {done_steps} took {step_s:.0f} s and a dev evaluation {eval_s:.0f} s: the remaining {left_steps} "
            f"steps and {left_evals} dev evaluations take about {total / 60:.0f} min on this machine.",
            flush=True,
        )


class RewardDevPlot(L.Callback):
    """At the end of training: the training reward and the dev score against the step, as
    `plots/reward_dev.png` in the run folder and in MLflow."""

    ARTIFACT = "plots/reward_dev.png"

    def __init__(self, run_dir: str):
        self.path = Path(run_dir) / self.ARTIFACT

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not module.rewrite_rows or not trainer.is_global_zero:
            return
        plots.save(plots.reward_and_dev(module.rewrite_rows, module.monitor), self.path)
        for logger in _mlflow_loggers(trainer):
            logger.experiment.log_artifact(logger.run_id, str(self.path), os.path.dirname(self.ARTIFACT))


class SystemMetrics(L.Callback):
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network, GPU when
    there is one) for the runs of the MLflow loggers, sampled every `interval_s` while fitting.
    The runs are made by Lightning's MlflowClient, not mlflow.start_run, so MLflow's own switch
    (log_system_metrics) does not reach them: the monitor is started here. They are sent as sampled,
    not held back for a checkpoint like the training metrics: they describe the machine, which a
    resume does not replay."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.monitors: list[SystemMetricsMonitor] = []

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        for logger in _mlflow_loggers(trainer):
            # resume_logging: a resumed run continues its system/ steps instead of restarting at 0
            monitor = SystemMetricsMonitor(
                logger.run_id, self.interval_s, resume_logging=True, tracking_uri=logger._tracking_uri
            )
            monitor.start()
            self.monitors.append(monitor)

    def _stop(self) -> None:
        # before the loggers close their runs: the monitor's last batch goes to a running run
        for monitor in self.monitors:
            monitor.finish()
        self.monitors.clear()

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self._stop()


class LastCheckpoint(L.Callback):
    """Saves `last.ckpt` after every dev evaluation, and every `every_n_steps` rollout steps between them
    (model, optimizer, scheduler, loops and the module's own state), written aside, fsynced and then put
    in place in one step so a kill or a full disk never leaves half a checkpoint, then lets the loggers
    send the metrics it now covers (prewrite.loggers). Those metrics are also stored in the checkpoint: a
    kill after the checkpoint is in place but before they reach MLflow loses nothing, a resume sends the
    ones MLflow lacks.
    Weights that are not finite are never saved. A save that fails (a full disk) leaves the previous
    checkpoint in place and the run goes on; the metrics wait for the next save.

    A checkpoint is a file, or under DeepSpeed (and FSDP's sharded state dicts) a folder that every
    rank writes its shards into; the folder is then `last.ckpt.<time>` behind a `last.ckpt` symlink."""

    def __init__(self, dirpath: str, every_n_steps: int | None = None):
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # every rank writes its shards here (DeepSpeed) and looks here for a checkpoint to resume from
        distributed.check_same_on_every_rank(trainer, str(self.path.parent), "checkpoint folder")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.save(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        # one training batch is one rollout step; a step followed by a dev evaluation is saved after it
        steps = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        if self.every_n_steps and steps % self.every_n_steps == 0 and steps % trainer.val_check_batch != 0:
            self.save(trainer, module)

    def save(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        check_finite(module)
        tmp = self.path.with_name(self.path.name + ".tmp")
        if trainer.is_global_zero:  # left by a save that was killed: shards of two saves must not mix
            _remove(tmp)
            # the previous checkpoint's size, or before the first one: weights plus Adam's two moments
            need = fsio.size(self.path.resolve()) or checkpoint_bytes(module)
            fsio.warn_if_short_of_space(self.path.parent, need, "a checkpoint (the previous one is kept if it fails)")
        trainer.strategy.barrier()
        try:
            trainer.save_checkpoint(tmp)  # returns once every rank has written its part
            if trainer.is_global_zero:
                _publish(tmp, self.path)
        except OSError as e:  # a full disk: the previous checkpoint stays, and so do the unsent metrics
            _remove(tmp)
            log.error("Could not save the checkpoint %s (%s); %s stays the one a resume uses", tmp, e, self.path)
            return
        trainer.strategy.barrier()
        for logger in trainer.loggers:
            if isinstance(logger, CheckpointedMLFlowLogger):
                logger.flush()

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["prewrite_unsent_metrics"] = [
            m for lg in trainer.loggers if isinstance(lg, CheckpointedMLFlowLogger) for m in lg.pending
        ]

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        self._unsent = checkpoint.get("prewrite_unsent_metrics", [])

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, CheckpointedMLFlowLogger) and getattr(self, "_unsent", None):
                logger.send_missing(self._unsent)
        self._unsent = []


def check_finite(module: torch.nn.Module) -> None:
    """A checkpoint with a NaN or infinite weight would poison every resume: refuse it."""
    bad = [name for name, p in module.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise faults.NonFiniteError(f"not checkpointing non-finite weights ({len(bad)} tensors, e.g. {bad[0]})")


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def checkpoint_bytes(module: torch.nn.Module) -> int:
    """About what a checkpoint of `module` takes: its weights and AdamW's two moments."""
    return 3 * parameter_bytes(module)


class StopOnSignal(L.Callback):
    """On SIGTERM / SIGUSR1 / SIGINT (prewrite.faults): the module stops at its next safe point by raising
    StopRequested; here the checkpoint is written and the MLflow runs are marked KILLED."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        faults.install_handlers()  # Lightning put its own SIGTERM handler in place as fit started

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, faults.StopRequested):
            return
        # A step stopped before its update is undone (module.stop_point): make Lightning's counters say
        # so too, as if saved after the previous step, so a resume runs the step from its start.
        progress = trainer.fit_loop.epoch_loop.batch_progress
        for counts in (progress.current, progress.total):
            counts.ready = counts.started = counts.processed = counts.completed
        progress.is_last_batch = False  # a stop in the last step: else a resume would take the epoch as done
        for callback in trainer.callbacks:
            if isinstance(callback, LastCheckpoint):
                callback.save(trainer, module)
        for logger in trainer.loggers:
            if isinstance(logger, CheckpointedMLFlowLogger):
                logger.stopped = True


def _publish(tmp: Path, path: Path) -> None:
    """Make the finished save at `tmp` the checkpoint at `path` atomically: a kill leaves the old
    checkpoint or the new one. A file is renamed over the old one; a folder cannot be renamed over a
    non-empty folder, so it keeps a name of its own and the `path` symlink is switched to it."""
    # on disk before the rename: else a power loss could leave the new name on unwritten data
    for f in [tmp] if tmp.is_file() else [f for f in tmp.rglob("*") if f.is_file()]:
        fsio.fsync_file(f)
    if tmp.is_file():
        os.replace(tmp, path)
        fsio.fsync_dir(path.parent)
        return
    folder = path.with_name(f"{path.name}.{time.time_ns()}")
    os.replace(tmp, folder)
    link = path.with_name(path.name + ".link")
    _remove(link)
    link.symlink_to(folder.name)  # relative: the run folder can be moved
    os.replace(link, path)
    fsio.fsync_dir(path.parent)
    for stale in path.parent.glob(f"{path.name}.*"):  # the previous checkpoint, and any a kill left behind
        if stale != folder:
            _remove(stale)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
