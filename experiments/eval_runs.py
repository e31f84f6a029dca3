"""What the table scripts of experiments/ share: the prewrite.evaluate runs in an output folder's MLflow store,
and a mean ± std cell."""

import statistics
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run


def evaluation_runs(folder: Path) -> tuple[MlflowClient, list[Run]]:
    """The client of `folder`'s MLflow store and its evaluation runs (those with a `rewriter_path` param)."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return client, [r for r in runs if "rewriter_path" in r.data.params]


def mean_std(values: list[float], digits: int = 3, sign: str = "") -> str:
    """The mean, and ± the standard deviation (n-1) where there are two values or more."""
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):{sign}.{digits}f}{spread}"
