"""Evaluate a trained rewriter on the test split: `python -m prewrite.evaluate rewriter_path=... [task=...]`.

Rows of the report: the initial instruction (baseline), PRewrite-I (the greedy rewrite) and
PRewrite-S (the best on dev of `num_samples` sampled rewrites). Candidates are scored on dev only;
test scores the three chosen instructions, after the choice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import lightning as L
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from omegaconf import DictConfig

from prewrite import plots, precision, prompt_registry, rewriter_model, runs
from prewrite.backends import build_backend
from prewrite.report import columns, examples_table, score_text
from prewrite.rewards import RewriteScorer
from prewrite.selection import DevSelection, or_initial, prewrite_i_and_s
from prewrite.tasks import load_task

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    precision.resolve_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    task = load_task(cfg.task)
    metric = task.metric
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [metric], [1.0])
    rw = rewriter_model.load(cfg.rewriter_path, cfg.paths.mlflow_tracking_uri, cfg.dtype)
    if rw.info.get("task") not in (None, task.name):
        log.warning("The rewriter was trained on task %r; evaluating it on %r", rw.info["task"], task.name)
    initial = task.instruction
    dev_rows = task.eval_rows("dev", cfg.dev_examples, cfg.seed)
    selection = DevSelection(scorer, dev_rows, metric)
    greedy, selected = prewrite_i_and_s(rw, initial, cfg, selection)

    dev_reported = scorer([initial, greedy], dev_rows).metrics[metric] + [selection.best["dev_score"]]
    # PRewrite-S with the initial instruction among its candidates: what a user should deploy
    safe, kept_initial = or_initial(initial, dev_reported[0], selected, dev_reported[2])
    dev_reported.append(dev_reported[0] if kept_initial else dev_reported[2])
    if kept_initial:
        print(f"No sampled rewrite beat the initial instruction on dev ({score_text(dev_reported[0])}): keep your own.")

    # Report on test: only now, and only the chosen instructions.
    test_rows = task.eval_rows("test", cfg.test_examples, cfg.seed)
    reported = {"initial": initial, "prewrite_i": greedy, "prewrite_s": selected, "prewrite_s_or_initial": safe}
    on_test = scorer(list(reported.values()), test_rows)
    test_scores = on_test.metrics[metric]
    results = {}
    table = []
    for (name, text), dev, test in zip(reported.items(), dev_reported, test_scores, strict=True):
        results[f"test/{name}/{metric}"] = test
        results[f"dev/{name}/{metric}"] = dev
        table.append({"method": name, "instruction": text, f"dev_{metric}": dev, f"test_{metric}": test})
    candidates_table = [
        {"candidate": i, "instruction": c["instruction"], f"dev_{metric}": c["dev_score"]}
        | {"selected": c["instruction"] == selected}
        for i, c in enumerate(selection.scored)
    ]
    examples = examples_table(task, list(reported), on_test, test_rows)
    run_id = _report(cfg, task.name, metric, len(dev_rows), len(test_rows), table, candidates_table, examples, results)
    if run_id and cfg.register_prompts:
        _register_prompts(cfg, task, dev_rows, len(test_rows), table, run_id)
    return results


def _register_prompts(cfg, task, dev_rows: list[dict], n_test: int, table: list[dict], run_id: str) -> None:
    """PRewrite-I and PRewrite-S as versions of the task's prompt, with their dev and test scores."""
    where = f"evaluation run {run_id} of rewriter {cfg.rewriter_path}"
    origins = {
        "prewrite_i": f"PRewrite-I (greedy rewrite), {where}",
        "prewrite_s": f"PRewrite-S (best on dev of {cfg.num_samples} sampled rewrites), {where}",
    }
    dev, test = f"dev_{task.metric}", f"test_{task.metric}"
    chosen = [
        prompt_registry.Chosen(r["instruction"], r["method"], run_id, origins[r["method"]], r[dev], cfg.seed, r[test])
        for r in table
        if r["method"] in origins
    ]
    scored = prompt_registry.scored_on(task.metric, dev_rows, cfg.task_backend, task)
    prompt_registry.register(cfg.logger.tracking_uri, task.name, chosen, scored, n_test)


def _report(cfg, task_name, metric, n_dev, n_test, table, candidates_table, examples, results) -> str | None:
    """Prints the table and writes it to the run folder and to MLflow; returns the MLflow run id, if any."""
    print(
        f"\n{task_name}: {metric} on {n_test} test rows; "
        f"PRewrite-S chosen among {len(candidates_table)} candidates on {n_dev} dev rows"
    )
    print(f"{'method':<12} {'dev':>7} {'test':>7}  instruction")
    for row in table:
        dev, test = row[f"dev_{metric}"], row[f"test_{metric}"]
        print(f"{row['method']:<12} {score_text(dev):>7} {score_text(test):>7}  {row['instruction']!r}")
    out = Path(cfg.paths.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps({"results": table, "candidates": candidates_table}, indent=2))
    png = plots.save(plots.methods(table, metric), out / "plots" / "methods.png")
    print(f"Written to {os.path.relpath(out / 'evaluation.json')} and {os.path.relpath(png)}")
    if not cfg.logger.get("_target_"):
        return None
    client, run_id = runs.create_run(cfg, {MLFLOW_RUN_NAME: f"eval-{task_name}", "prewrite.method": "evaluate"})
    for key, value in results.items():
        client.log_metric(run_id, key, float("nan") if value is None else value)
    client.log_table(run_id, columns(table), "evaluation.json")
    client.log_table(run_id, columns(candidates_table), "candidates.json")
    client.log_table(run_id, columns(examples), "test_examples.json")
    client.log_artifact(run_id, str(png), "plots")
    client.set_terminated(run_id, "FINISHED")
    print(f"MLflow run {run_id}")
    return run_id


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    evaluate(cfg)


if __name__ == "__main__":
    main()
