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
        self.pending: list[tuple[dict[str, float], int | None]] = []
        self.stopped = False  # stopped by a signal (callbacks.StopOnSignal): the run ends KILLED, not FAILED

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.flush_on_checkpoint:
            self.pending.append((dict(metrics), step))
        else:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def flush(self) -> None:
        for metrics, step in self.pending:
            super().log_metrics(metrics, step)
        self.pending.clear()

    @rank_zero_only
    def send_missing(self, pending: list[tuple[dict[str, float], int | None]]) -> None:
        """Sends the metrics a checkpoint held that MLflow lacks (a kill came between the checkpoint and
        its flush); those it has already are not sent twice."""
        client, run_id = self.experiment, self.run_id
        have = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in {k for m, _ in pending for k in m}}
        for metrics, step in pending:
            missing = {k: v for k, v in metrics.items() if step not in have[k]}
            if missing:
                super().log_metrics(missing, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        # After a failure the held-back metrics are dropped: a resume from the last checkpoint
        # recomputes (and logs) those steps. A stop on a signal has flushed what its checkpoint covers.
        if status == "success":
            self.flush()
        super().finalize("KILLED" if status == "failed" and self.stopped else status)


def mlflow_experiment(client, logger_cfg: Mapping) -> str:
    """The id of the MLflow experiment `logger_cfg.experiment_name` (created if missing)."""
    exp = client.get_experiment_by_name(logger_cfg["experiment_name"])
    if exp:
        return exp.experiment_id
    return client.create_experiment(logger_cfg["experiment_name"], logger_cfg["artifact_location"])
