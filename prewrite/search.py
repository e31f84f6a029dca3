"""One search baseline on its own (prewrite/baselines.py, conf/search.yaml):
`python -m prewrite.search method=gepa budget=2000 [task=jsonl task.path=rows.jsonl ...]`

It runs the method from the untrained rewriter at the budget, selects on dev, then scores the initial
and the chosen instruction on test, once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
import lightning as L
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from omegaconf import DictConfig

from prewrite import config_check, precision, rewriter_model, runs
from prewrite.backends import build_backend
from prewrite.baselines import METHODS, log_search_run, run
from prewrite.cli import tool_main
from prewrite.rewards import RewriteScorer
from prewrite.selection import DevSelection
from prewrite.tasks import load_task


def search(cfg: DictConfig) -> dict:
    """`cfg.method` from the untrained rewriter at `cfg.budget` task-LLM requests, selected on dev;
    the initial and the chosen instruction scored on test afterwards."""
    if cfg.method not in METHODS:
        raise config_check.ConfigError(f"method: unknown search method {cfg.method!r}; choose from {list(METHODS)}")
    if not isinstance(cfg.budget, int) or cfg.budget <= 0:
        raise config_check.ConfigError(f"budget must be a positive number of task-LLM requests, got {cfg.budget!r}")
    config_check.check_test_rows(cfg)
    precision.resolve_config(cfg)
    L.seed_everything(cfg.seed)
    task = load_task(cfg.task)
    metric = task.metric
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [metric], [1.0])
    dev_rows = task.eval_rows("dev", cfg.dev_examples, cfg.seed)
    rewriter = rewriter_model.load_untrained(
        cfg.rewriter.model_name_or_path, cfg.dtype, cfg.rewriter.chat_template, rewriter_model.decoding(cfg)
    )
    selection = DevSelection(scorer, dev_rows, metric, cfg.budget)
    selection, usage = run(cfg.method, cfg, rewriter, selection, task, cfg.seed)
    best = selection.best
    # Every choice is made; only now the test rows are scored.
    test_rows = task.eval_rows("test", cfg.test_examples, cfg.test_seed)
    test_initial, test_best = scorer([task.instruction, best["instruction"]], test_rows).metrics[metric]
    result = {
        "method": cfg.method,
        "instruction": best["instruction"],
        "initial": task.instruction,
        "dev": best["dev_score"],
        "test": test_best,
        "test_initial": test_initial,
        "task_llm_requests": selection.spent,
        "budget": cfg.budget,
        "dev_rows": len(dev_rows),
        "test_rows": len(test_rows),
        "rewriter_usage": usage,
        "curve": selection.curve(),
        "candidates": selection.scored,
    }
    out = Path(cfg.paths.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(result, indent=2))
    if cfg.logger.get("_target_"):
        tags = {MLFLOW_RUN_NAME: f"{cfg.method}-{task.name}", "prewrite.method": cfg.method}
        client, run_id = runs.create_run(cfg, tags)
        log_search_run(client, run_id, cfg.method, metric, result)
        client.log_metric(run_id, f"test/initial/{metric}", test_initial)
        client.set_terminated(run_id, "FINISHED")
        result["run_id"] = run_id
        print(f"MLflow run {run_id}")
    print(
        f"{cfg.method} on {task.name}: {selection.spent} of {cfg.budget} task-LLM requests, "
        f"{len(selection.scored)} candidates scored on {len(dev_rows)} dev rows\n"
        f"  initial  test {metric} {test_initial:.3f}: {task.instruction!r}\n"
        f"  chosen   test {metric} {test_best:.3f} (dev {best['dev_score']:.3f}): {best['instruction']!r}\n"
        f"Written to {os.path.relpath(out / 'search.json')}"
    )
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="search")
def main(cfg: DictConfig) -> None:
    with tool_main("search"):
        search(cfg)


if __name__ == "__main__":
    main()
