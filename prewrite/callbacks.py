"""Lightning callbacks: the rewrites table as an MLflow artifact and a JSONL file in the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger


class RewritesTable(L.Callback):
    """Flushes the module's new rewrite rows after each dev evaluation and at the end of training.

    MLflow's log_table appends to an existing artifact, so only rows not yet flushed are sent; the
    same rows are appended to `rewrites.jsonl` in the run folder.
    """

    def __init__(self, run_dir: str, artifact_file: str = "rewrites.json"):
        self.path = Path(run_dir) / "rewrites.jsonl"
        self.artifact_file = artifact_file
        self.flushed = 0

    def flush(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        new = module.rewrite_rows[self.flushed :]
        if not new or not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        lead = ["step", "split", "rewrite", "reward"]
        columns = lead + sorted({k for r in new for k in r} - set(lead))
        table = {k: [r.get(k) for r in new] for k in columns}
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_table(logger.run_id, data=table, artifact_file=self.artifact_file)
        self.flushed = len(module.rewrite_rows)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.flush(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.flush(trainer, module)
