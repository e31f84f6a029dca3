"""An MLflow logger whose metrics reach the store only once a checkpoint holds the state behind them."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only


class CheckpointedMLFlowLogger(MLFlowLogger):
    """Metrics are held back until the next checkpoint is saved (callbacks.LastCheckpoint calls
    `flush`) and sent at a successful end, so a run killed and resumed from its last checkpoint logs
    every step exactly once: what MLflow shows is what the checkpoint can reproduce. The cost: the
    UI trails by at most one dev-evaluation interval (the progress bar is live). With
    `flush_on_checkpoint=False` metrics are sent at once."""

    def __init__(self, *args, flush_on_checkpoint: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.flush_on_checkpoint = flush_on_checkpoint
        self._pending: list[tuple[dict[str, float], int | None]] = []

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.flush_on_checkpoint:
            self._pending.append((dict(metrics), step))
        else:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def flush(self) -> None:
        for metrics, step in self._pending:
            super().log_metrics(metrics, step)
        self._pending.clear()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        # After a failure the held-back metrics are dropped: a resume from the last checkpoint
        # recomputes (and logs) those steps.
        if status == "success":
            self.flush()
        super().finalize(status)


def mlflow_experiment(client, logger_cfg: Mapping) -> str:
    """The id of the MLflow experiment `logger_cfg.experiment_name` (created if missing)."""
    exp = client.get_experiment_by_name(logger_cfg["experiment_name"])
    if exp:
        return exp.experiment_id
    return client.create_experiment(logger_cfg["experiment_name"], logger_cfg["artifact_location"])
