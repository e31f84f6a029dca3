"""Lightning callbacks: the rewrites table (MLflow and the run folder) and the resumable last checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

from prewrite.loggers import CheckpointedMLFlowLogger


class RewritesTable(L.Callback):
    """Writes the module's whole rewrites table after each dev evaluation and at the end of training.

    The table is rewritten, not appended to (MLflow's log_table appends): the rows live in the
    module's checkpoint, so after a resume the table holds each step exactly once.
    """

    LEAD = ["step", "split", "rewrite", "reward"]

    def __init__(self, run_dir: str, artifact_file: str = "rewrites.json"):
        self.path = Path(run_dir) / "rewrites.jsonl"
        self.artifact_file = artifact_file

    def flush(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        rows = module.rewrite_rows
        if not rows or not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        columns = self.LEAD + sorted({k for r in rows for k in r} - set(self.LEAD))
        table = pd.DataFrame([[r.get(k) for k in columns] for r in rows], columns=columns)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
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


class LastCheckpoint(L.Callback):
    """Saves `last.ckpt` after every dev evaluation (model, optimizer, scheduler, loops and the
    module's own state), written aside and renamed so a kill never leaves half a file, then lets the
    loggers send the metrics it now covers (prewrite.loggers)."""

    def __init__(self, dirpath: str):
        self.path = Path(dirpath) / "last.ckpt"

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier()
        for logger in trainer.loggers:
            if isinstance(logger, CheckpointedMLFlowLogger):
                logger.flush()
