"""Evaluate a trained rewriter on the test split: `python -m prewrite.evaluate rewriter_path=... [task=...]`.

Rows of the report: the initial instruction (baseline), PRewrite-I (the greedy rewrite) and
PRewrite-S (the best on dev of `num_samples` sampled rewrites). Candidates are scored on dev only;
test scores the three chosen instructions, after the choice. A rewriter trained with
rewrite_mode=input rewrites every dev and test input greedily (PRewrite-I); it has no PRewrite-S.

On a task the rewriter was not trained on (transfer), PRewrite-I spends no task-model request on that
task before test; PRewrite-S spends its dev scoring. Both counts, and the rewriter and task-model
calls per test example, are reported (`cost/...`).
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

from prewrite import config_check, plots, precision, prompt_registry, rewriter_model, runs
from prewrite.backends import build_backend
from prewrite.cli import tool_main
from prewrite.report import columns, examples_table, score_text
from prewrite.rewards import RewriteScorer
from prewrite.selection import DevSelection, or_initial, prewrite_i_and_s
from prewrite.tasks import load_task

log = logging.getLogger(__name__)

# train.yaml's keys that evaluate's config inherits and never reads: as params they would describe a
# training that did not happen (the rewriter's own is in its training run); the meta prompt of the
# other rewrite mode is left out too
NOT_READ = (
    "algorithm", "reward", "rewriter", "trainer", "steps", "examples_per_step", "eval_every", "optimized_metric",
    "early_stopping_patience", "log_rewriter_to_mlflow", "save_checkpoints", "save_every",
    "keep_checkpoint_after_fit", "ckpt_path", "stages", "system_metrics_interval_s", "callbacks",
    "max_skipped_updates_in_a_row", "multirun_fails_on_job_error",
)  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, float]:
    config_check.check_test_rows(cfg)
    precision.resolve_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    task = load_task(cfg.task)
    metric = task.metric
    rw = rewriter_model.load(cfg.rewriter_path, cfg.paths.mlflow_tracking_uri, cfg.dtype, rewriter_model.decoding(cfg))
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [metric], [1.0])
    trained_on = rw.info.get("trained_on") or [rw.info.get("task")]
    transfer = None not in trained_on and task.name not in trained_on
    if transfer:
        print(f"Transfer: the rewriter was trained on {trained_on}, never on {task.name}.")
    dev_rows = task.eval_rows("dev", cfg.dev_examples, cfg.seed)
    test_rows = task.eval_rows("test", cfg.test_examples, cfg.test_seed)
    per_input = rw.info.get("rewrite_mode", "task") == "input"
    _use_trained_meta_prompt(cfg, rw.info, per_input)
    if per_input:
        methods, candidates_table, spent = _per_input(cfg, task, scorer, rw, dev_rows, test_rows)
    else:
        methods, candidates_table, spent = _task_level(cfg, task, scorer, rw, dev_rows)

    # Report on test: only now, and only the chosen instructions (per-input: the rewrites of test's own inputs).
    on_test = scorer.score_groups([_pairs(instruction, test_rows) for instruction, _ in methods.values()])
    results, table = {}, []
    for (name, (instruction, dev)), test in zip(methods.items(), on_test.metrics[metric], strict=True):
        results[f"test/{name}/{metric}"] = test
        results[f"dev/{name}/{metric}"] = dev
        results |= _costs(name, instruction, task.instruction, spent[name], len(test_rows))
        shown = instruction if isinstance(instruction, str) else f"(a rewrite per input; the first: {instruction[0]!r})"
        table.append({"method": name, "instruction": shown, f"dev_{metric}": dev, f"test_{metric}": test})
    examples = examples_table(task, list(methods), on_test, test_rows)
    tags = {"prewrite.trained_on": ",".join(map(str, trained_on)), "prewrite.transfer": str(transfer).lower()}
    run_id = _report(
        cfg, task.name, metric, len(dev_rows), len(test_rows), table, candidates_table, examples, results, tags
    )
    if run_id and cfg.register_prompts and not per_input:
        _register_prompts(cfg, task, dev_rows, len(test_rows), table, run_id)
    return results


def _use_trained_meta_prompt(cfg: DictConfig, info: dict, per_input: bool) -> None:
    """A trained rewriter rewrites with the meta prompt it was trained with (its prewrite.json), and the
    run's params say so, not the train.yaml defaults evaluate's config inherits. A plain model folder
    (no prewrite.json) keeps the config's."""
    cfg.rewrite_mode = "input" if per_input else "task"
    key = "input_meta_prompt" if per_input else "meta_prompt"
    trained = info.get("meta_prompt")
    if trained and trained != cfg[key]:
        print(
            f"Rewriting with the meta prompt the rewriter was trained with (its prewrite.json), not the config's {key}."
        )
        cfg[key] = trained


def _task_level(cfg, task, scorer, rw, dev_rows) -> tuple[dict, list[dict], dict[str, int]]:
    """PRewrite-I and PRewrite-S of one instruction for the whole task, chosen on dev: the methods
    {name: (instruction, dev score)}, PRewrite-S's candidates, and the task-model requests each spent on dev."""
    initial, metric = task.instruction, task.metric
    selection = DevSelection(scorer, dev_rows, metric)
    greedy, selected = prewrite_i_and_s(rw, initial, cfg, selection)
    dev_scores = scorer([initial, greedy], dev_rows).metrics[metric] + [selection.best["dev_score"]]
    # PRewrite-S with the initial instruction among its candidates: what a user should deploy
    safe, kept_initial = or_initial(initial, dev_scores[0], selected, dev_scores[2])
    if kept_initial:
        print(f"No sampled rewrite beat the initial instruction on dev ({score_text(dev_scores[0])}): keep your own.")
    methods = {
        "initial": (initial, dev_scores[0]),
        "prewrite_i": (greedy, dev_scores[1]),
        "prewrite_s": (selected, dev_scores[2]),
        "prewrite_s_or_initial": (safe, dev_scores[0] if kept_initial else dev_scores[2]),
    }
    candidates = [
        {"candidate": i, "instruction": c["instruction"], f"dev_{metric}": c["dev_score"]}
        | {"selected": c["instruction"] == selected}
        for i, c in enumerate(selection.scored)
    ]
    spent = {"initial": 0, "prewrite_i": 0, "prewrite_s": selection.spent}
    spent["prewrite_s_or_initial"] = selection.spent + len(dev_rows)
    return methods, candidates, spent


def _per_input(cfg, task, scorer, rw, dev_rows, test_rows) -> tuple[dict, list[dict], dict[str, int]]:
    """PRewrite-I of a per-input rewriter: the greedy rewrite of every input, against the initial
    instruction on dev (which one to deploy); as _task_level returns."""
    initial, metric = task.instruction, task.metric
    rewrite = lambda rows: rw.rewrite_each(  # noqa: E731
        initial, cfg.input_meta_prompt, [task.input_text(r) for r in rows], cfg.max_new_tokens
    )
    dev_rewrites = rewrite(dev_rows)
    on_dev = scorer.score_groups([_pairs(initial, dev_rows), _pairs(dev_rewrites, dev_rows)])
    initial_dev, rewrites_dev = on_dev.metrics[metric]
    kept_initial = or_initial(initial, initial_dev, "", rewrites_dev)[1]
    if kept_initial:
        print(f"The per-input rewrites did not beat the initial instruction on dev ({score_text(initial_dev)}).")
    test_rewrites = rewrite(test_rows)  # the inputs only: no gold answer is read before scoring
    methods = {
        "initial": (initial, initial_dev),
        "prewrite_i": (test_rewrites, rewrites_dev),
        "prewrite_i_or_initial": (initial if kept_initial else test_rewrites, max(initial_dev, rewrites_dev)),
    }
    candidates = [
        {"candidate": i, "input": task.input_text(row), "instruction": text}
        for i, (text, row) in enumerate(zip(dev_rewrites, dev_rows, strict=True))
    ]
    return methods, candidates, {"initial": 0, "prewrite_i": 0, "prewrite_i_or_initial": 2 * len(dev_rows)}


def _pairs(instruction: str | list[str], rows: list[dict]) -> list[tuple[str, dict]]:
    """(instruction, row) for each row: one instruction for all, or a list with one per row."""
    texts = [instruction] * len(rows) if isinstance(instruction, str) else instruction
    return list(zip(texts, rows, strict=True))


def _costs(name: str, instruction: str | list[str], initial: str, spent: int, n_test: int) -> dict[str, float]:
    """What a method spends: task-model requests on this task before test (its optimization: 0 for a
    transferred PRewrite-I), and per test example the rewriter calls (none for the initial instruction,
    one rewrite for the whole task, or one per input) and task-model calls (always one)."""
    rewriter_calls = 1.0 / n_test if isinstance(instruction, str) else 1.0
    return {
        f"cost/{name}/optimization_task_llm_requests": float(spent),
        f"cost/{name}/rewriter_calls_per_test_example": 0.0 if instruction == initial else rewriter_calls,
        f"cost/{name}/task_llm_calls_per_test_example": 1.0,
    }


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


def _report(cfg, task_name, metric, n_dev, n_test, table, candidates_table, examples, results, tags) -> str | None:
    """Prints the table and writes it to the run folder and to MLflow; returns the MLflow run id, if any."""
    chosen = "per-input rewrites" if any("input" in c for c in candidates_table) else "PRewrite-S chosen among"
    print(f"\n{task_name}: {metric} on {n_test} test rows; {chosen} {len(candidates_table)} candidates on {n_dev} dev")
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
    other_mode_prompt = "meta_prompt" if cfg.rewrite_mode == "input" else "input_meta_prompt"
    tags = tags | {MLFLOW_RUN_NAME: f"eval-{task_name}", "prewrite.method": "evaluate"}
    client, run_id = runs.create_run(cfg, tags, omit=(*NOT_READ, other_mode_prompt))
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
    with tool_main("evaluate"):
        evaluate(cfg)


if __name__ == "__main__":
    main()
