"""Re-score a training run's logged rewrites on a split: `python -m prewrite.rescore run=<folder | run id>`.

The rewrites come from the run's rewrites table (`rewrites.jsonl` in its folder, or the `rewrites.json`
table of its MLflow run): every distinct one, the `top_k` greedy rewrites by their logged dev score, or
those logged at `at_steps`. They are scored with the configured task backend on `split`, and the
table (rewrite, where it was logged, its logged score, the new one) goes to the Hydra run folder and to
a new MLflow run tagged with the source run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import lightning as L
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from omegaconf import DictConfig

from prewrite import precision, runs
from prewrite.backends import build_backend
from prewrite.cli import tool_main
from prewrite.report import columns, score_text
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

log = logging.getLogger(__name__)
WHICH = ("all", "top_k", "steps")
SOURCE_RUN_TAG = "prewrite.rescored_run"


def logged_rewrites(spec: str, tracking_uri: str) -> tuple[list[dict], str | None, str | None]:
    """The rewrites table of a training run folder or MLflow run id, the run id and the task it trained on
    (where known)."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        table = folder / "rewrites.jsonl"
        if not table.exists():
            raise FileNotFoundError(f"run={spec}: no rewrites.jsonl in it (is it a training run folder?)")
        run_id_file, settings = folder / runs.RUN_ID_FILE, folder / runs.SETTINGS_FILE
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
        task = json.loads(settings.read_text()).get("task.name") if settings.exists() else None
        return [json.loads(line) for line in table.read_text().splitlines() if line.strip()], run_id, task
    runs.require_run_id(spec, "run")
    try:
        client = MlflowClient(tracking_uri)
        task = client.get_run(spec).data.params.get("task.name")
        path = client.download_artifacts(spec, "rewrites.json")
    except Exception as e:
        raise FileNotFoundError(
            f"run={spec!r} is neither a folder nor an MLflow run with a rewrites.json table in {tracking_uri}: {e}"
        ) from None
    table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]], spec, task


def choose(rows: list[dict], which: str, top_k: int, steps: list[int] | None) -> list[dict]:
    """The distinct rewrites to score, each with where it was first logged and its best logged dev score."""
    if which not in WHICH:
        raise ValueError(f"which={which!r}; expected one of {', '.join(WHICH)}")
    if which == "steps" and not steps:
        raise ValueError("which=steps needs at_steps=[...], the training steps whose rewrites to score")
    if which == "top_k" and top_k < 1:
        raise ValueError(f"top_k={top_k}; expected an integer >= 1")
    logged = [r for r in rows if r["split"] != "initial"]
    if which == "steps":
        logged = [r for r in logged if r["step"] in set(steps)]
    if which == "top_k":
        logged = sorted((r for r in logged if r["split"] == "dev"), key=lambda r: -r["dev_score"])
    chosen: dict[str, dict] = {}
    for r in logged:
        entry = chosen.setdefault(r["rewrite"], {"rewrite": r["rewrite"], "step": r["step"], "split": r["split"]})
        if r.get("dev_score") is not None:
            entry["logged_dev_score"] = max(entry.get("logged_dev_score", r["dev_score"]), r["dev_score"])
    return list(chosen.values())[:top_k] if which == "top_k" else list(chosen.values())


def rescore(cfg: DictConfig) -> list[dict]:
    rows, source_run, trained_on = logged_rewrites(str(cfg.run), cfg.paths.mlflow_tracking_uri)
    table = choose(rows, cfg.which, cfg.top_k, list(cfg.at_steps) if cfg.at_steps else None)
    if cfg.split not in ("dev", "test"):
        raise ValueError(f"split={cfg.split!r}; expected dev or test")
    if trained_on not in (None, cfg.task.name):
        raise ValueError(f"run={cfg.run} trained on task {trained_on!r}; pass task={trained_on} (and its overrides)")
    if not table:
        raise ValueError(f"run={cfg.run}: no logged rewrites match which={cfg.which} at_steps={cfg.at_steps}")
    precision.resolve_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    task = load_task(cfg.task)
    metric = task.metric
    initial = [r for r in rows if r["split"] == "initial"][:1] if cfg.include_initial else []
    table = [{"rewrite": r["rewrite"], "step": 0, "split": "initial", "logged_dev_score": r.get("dev_score")}
             for r in initial] + table  # fmt: skip
    eval_rows = task.eval_rows(cfg.split, cfg.examples, cfg.seed)
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [metric], [1.0])
    scores = scorer([r["rewrite"] for r in table], eval_rows).metrics[metric]
    for row, score in zip(table, scores, strict=True):
        row[f"{cfg.split}_{metric}"] = score
    _report(cfg, task.name, metric, len(eval_rows), table, source_run)
    return table


def _report(cfg, task_name: str, metric: str, n_rows: int, table: list[dict], source_run: str | None) -> None:
    key = f"{cfg.split}_{metric}"
    print(f"\n{task_name}: {len(table)} rewrites of run {cfg.run}, {metric} on {n_rows} {cfg.split} rows")
    print(f"{'logged':>7} {cfg.split:>7}  step  rewrite")
    for r in table:
        print(f"{score_text(r.get('logged_dev_score')):>7} {score_text(r[key]):>7} {r['step']:>5}  {r['rewrite']!r}")
    out = Path(cfg.paths.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rescore.json").write_text(json.dumps(table, indent=2))
    print(f"Written to {os.path.relpath(out / 'rescore.json')}")
    if not cfg.logger.get("_target_"):
        return
    tags = {MLFLOW_RUN_NAME: f"rescore-{task_name}", "prewrite.method": "rescore"}
    client, run_id = runs.create_run(cfg, tags | ({SOURCE_RUN_TAG: source_run} if source_run else {}))
    client.log_table(run_id, columns(table), "rescored.json")
    best = max((r[key] for r in table if r["split"] != "initial" and r[key] is not None), default=None)
    if best is not None:
        client.log_metric(run_id, f"{cfg.split}/best_rescored/{metric}", best)
    client.set_terminated(run_id, "FINISHED")
    print(f"MLflow run {run_id}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="rescore")
def main(cfg: DictConfig) -> None:
    with tool_main("rescore", errors=(ValueError, FileNotFoundError)):
        rescore(cfg)


if __name__ == "__main__":
    main()
