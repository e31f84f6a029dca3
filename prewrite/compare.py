"""PRewrite against search at equal task-LLM budget: `python -m prewrite.compare experiment=sst2_smollm2`.

Per seed, in one process sharing one task-LLM backend:
1. train the rewriter (prewrite.train; its MLflow run is a child of this comparison's run);
2. PRewrite-I (greedy rewrite of the best-on-dev rewriter) and PRewrite-S (best on dev of
   `num_samples` sampled rewrites);
3. the baselines (`methods`, prewrite.search) get the task-LLM requests RL spent (training rewards, dev
   evaluations) plus PRewrite-S's selection: APE-style best-of-K, OPRO-style propose-and-select and
   GEPA (prewrite.gepa_search), all from the untrained rewriter;
4. every method's choice is scored on test, once, after all selection on the same dev rows.
Then mean ± std over seeds, and dev score against requests spent (the rollouts-to-accuracy curve).

Transfer mode (`transfer_to=[mr,cr]`, issue 23): the rewriter trains on `task` (e.g. a mixture) and steps
2-4 run on each unseen task instead, where PRewrite-I spends no request and each search method gets
`transfer_budget` requests; each task gets its own results folder.

A seed whose `results.json` exists is not run again, and a killed training resumes from its
checkpoint: re-run the same command with `hydra.run.dir=<the comparison's folder>` (more seeds may be
added; other settings must stay as they were, which the folder's settings.json enforces).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path

import hydra
import lightning as L
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from omegaconf import DictConfig, OmegaConf

from prewrite import baselines, config_check, faults, plots, precision, prompt_registry, rewriter_model, runs
from prewrite.backends import build_backends
from prewrite.cli import tool_main
from prewrite.report import columns, examples_table
from prewrite.rewards import RewriteScorer
from prewrite.selection import DevSelection, best_so_far, or_initial, prewrite_i_and_s, requests_to_reach
from prewrite.tasks import Task, load_task
from prewrite.tasks.mixture import is_mixture, member_configs, task_configs
from prewrite.training import train

log = logging.getLogger(__name__)

RL_METHODS = ["initial", "prewrite_i", "prewrite_s", "prewrite_s_or_initial"]
CURVE_METRIC = baselines.CURVE_METRIC


def reported_methods(cfg) -> list[str]:
    """The rows of the report: the initial instruction, RL's two, then the search baselines."""
    for method in cfg.methods:
        if method not in baselines.METHODS:
            raise ValueError(f"methods: unknown search method {method!r}; choose from {list(baselines.METHODS)}")
    return RL_METHODS + list(cfg.methods)


def target_tasks(cfg) -> list[Task]:
    """The tasks the methods are compared on: the training task, or in transfer mode (`transfer_to`) the
    unseen ones, which must not be among the tasks the rewriter trains on."""
    if not cfg.transfer_to:
        return [load_task(cfg.task)]
    budget = cfg.transfer_budget
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise config_check.ConfigError(f"transfer_budget={budget!r}; expected a positive number of task-LLM requests")
    try:
        configs = task_configs(cfg.transfer_to, "transfer_to")
    except ValueError as e:
        raise config_check.ConfigError(str(e)) from None
    trained = [c["name"] for c in member_configs(cfg.task)] if is_mixture(cfg.task) else [cfg.task.name]
    seen = [c["name"] for c in configs if c["name"] in trained]
    if seen:
        raise config_check.ConfigError(
            f"transfer_to: {seen} trained on (task={cfg.task.name}, {trained}); transfer is to tasks it never saw"
        )
    return [load_task(c) for c in configs]


def task_part(cfg, task: Task) -> str | None:
    """In transfer mode each compared task's outputs carry its name (folder, metric prefix, run and file
    names); comparing on the training task alone, they keep the plain names."""
    return task.name if cfg.transfer_to else None


def compare(cfg: DictConfig) -> dict:
    out = Path(cfg.paths.run_dir)
    config_check.check_test_rows(cfg)
    config_check.check_training(cfg)  # before the task LLM loads, not when the first seed reaches training
    precision.resolve_config(cfg)
    runs.check_same_settings(out, cfg)  # the seeds already done in `out` are reused: they must share these settings
    methods = reported_methods(cfg)
    targets = target_tasks(cfg)
    backends = build_backends(cfg.task_backend, cfg.cache, targets)
    to = "-to-" + "+".join(t.name for t in targets) if cfg.transfer_to else ""
    name = f"compare-{cfg.task.name}{to}-{time.strftime('%Y%m%d-%H%M%S')}"
    client, parent = runs.parent_run(cfg, out, {MLFLOW_RUN_NAME: name, "prewrite.method": "compare"})
    # a stop signal ends the seed at its next safe point; the seeds done and the trainings checkpointed
    # are reused when the same command runs again in the same folder
    with faults.stop_on_signals(), faults.ends_mlflow_run(client, parent):
        seeds = [run_seed(cfg, seed, targets, backends, out / f"seed{seed}", client, parent) for seed in cfg.seeds]
    results_dir = Path(cfg.get("results_dir") or out)
    summaries = {
        t.name: report(cfg, t, methods, [s[t.name] for s in seeds], results_dir, client, parent) for t in targets
    }
    if client:
        client.set_terminated(parent, "FINISHED")
        print(f"MLflow run {parent}")
    return summaries if cfg.transfer_to else summaries[targets[0].name]


def report(cfg, task: Task, methods: list[str], seeds: list[dict], results_dir: Path, client, parent) -> dict:
    """results.json, results.md and curve.png of one compared task (a folder per task in transfer mode),
    and its test scores in the parent MLflow run (`test/<task>/<method>/...` in transfer mode)."""
    part = task_part(cfg, task)
    prefix = "/".join(filter(None, ["test", part]))
    results_dir = results_dir / (part or "")
    summary = summarize(seeds, task.metric, methods)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.json").write_text(json.dumps({"summary": summary, "seeds": seeds}, indent=2))
    (results_dir / "results.md").write_text(markdown(summary, seeds, task, methods))
    png = plots.save(plots.budget_curves([s["curves"] for s in seeds], task.metric), results_dir / "curve.png")
    if client:
        for i, method in enumerate(methods):
            for j, s in enumerate(seeds):
                client.log_metric(parent, f"{prefix}/{method}/{task.metric}", s["test"][method], step=j)
            client.log_metric(parent, f"{prefix}/{method}/{task.metric}_mean", summary[method]["test_mean"], step=i)
            client.log_metric(parent, f"{prefix}/{method}/{task.metric}_std", summary[method]["test_std"], step=i)
        for f in ("results.json", "results.md"):
            client.log_artifact(parent, str(results_dir / f), part)
        client.log_artifact(parent, str(png), "/".join(filter(None, [part, "plots"])))
    print(f"\n{(results_dir / 'results.md').read_text()}\nWritten to {os.path.relpath(results_dir)}")
    return summary


def run_seed(cfg, seed: int, targets: list[Task], backends: list, folder: Path, client, parent) -> dict[str, dict]:
    """One seed: training, then every method chosen on each target task's dev rows and scored on its test
    rows; {task name: result}. Transfer mode: PRewrite-I spends nothing on a target, and each search
    method gets `transfer_budget` requests there; otherwise the search methods get what RL spent."""
    done = {t.name: folder / (task_part(cfg, t) or "") / "results.json" for t in targets}
    if all(path.exists() for path in done.values()):
        return {name: json.loads(path.read_text()) for name, path in done.items()}
    t0 = time.perf_counter()
    seed_cfg = OmegaConf.merge(cfg, {"seed": seed, "paths": {"run_dir": str(folder / "rl")}})
    tags = {MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: f"rl-seed{seed}"} if parent else {}
    train(seed_cfg, tags=tags, backend=None if cfg.transfer_to else backends[0])  # a mixture builds its own
    rl_rows = [json.loads(line) for line in (folder / "rl" / "rewrites.jsonl").read_text().splitlines()]
    rl_evals = [r for r in rl_rows if r["split"] == "dev"]
    if rl_evals[-1]["step"] != cfg.steps:  # then the steps after it would be missing from RL's spend
        raise ValueError(f"steps={cfg.steps} must be a multiple of eval_every={cfg.eval_every} (and no early stopping)")
    rl_curve = None if cfg.transfer_to else [(int(r["task_llm_requests"]), r[cfg.task.metric]) for r in rl_evals]
    t_train = time.perf_counter() - t0
    results = {}
    for task, backend in zip(targets, backends, strict=True):
        if done[task.name].exists():
            results[task.name] = json.loads(done[task.name].read_text())
            continue
        result = compare_on(seed_cfg, task, backend, folder / "rl", rl_curve, client, parent)
        result["wall_s"] |= {"rl": round(t_train, 1), "total": round(t_train + result["wall_s"]["search"], 1)}
        done[task.name].parent.mkdir(parents=True, exist_ok=True)
        done[task.name].write_text(json.dumps(result, indent=2))
        results[task.name] = result
    return results


def compare_on(cfg, task: Task, backend, rl_dir: Path, rl_curve: list | None, client, parent) -> dict:
    """The trained rewriter in `rl_dir` against the initial instruction and the search methods on `task`.
    `rl_curve`: training's (requests, dev score) on this task, or None when it never saw the task."""
    seed, metric, t0 = cfg.seed, task.metric, time.perf_counter()
    rl_spent = rl_curve[-1][0] if rl_curve else 0
    scorer = RewriteScorer(task, backend, [metric], [1.0])
    dev_rows = task.eval_rows("dev", cfg.dev_examples, seed)  # the rows training evaluated on
    initial = task.instruction
    L.seed_everything(seed)
    trained = rewriter_model.load(str(rl_dir), dtype=cfg.dtype, decoding=rewriter_model.decoding(cfg))
    selection = DevSelection(scorer, dev_rows, metric)
    prewrite_i, prewrite_s = prewrite_i_and_s(trained, initial, cfg, selection)
    budget = rl_spent + selection.spent if rl_curve else cfg.transfer_budget
    del trained

    untrained = rewriter_model.load_untrained(
        cfg.rewriter.model_name_or_path, cfg.dtype, cfg.rewriter.chat_template, rewriter_model.decoding(cfg)
    )
    searched, usage, wall = {}, {}, {}
    for method in cfg.methods:
        L.seed_everything(seed)
        t = time.perf_counter()
        own = DevSelection(scorer, dev_rows, metric, budget)
        searched[method], usage[method] = baselines.run(method, cfg, untrained, own, task, seed)
        wall[method] = round(time.perf_counter() - t, 1)

    dev = dict(zip(["initial", "prewrite_i"], scorer([initial, prewrite_i], dev_rows).metrics[metric], strict=True))
    dev |= {"prewrite_s": selection.best["dev_score"]} | {m: sel.best["dev_score"] for m, sel in searched.items()}
    # the initial instruction was scored on these dev rows at training's step 0: no extra spend
    safe, kept_initial = or_initial(initial, dev["initial"], prewrite_s, dev["prewrite_s"])
    dev["prewrite_s_or_initial"] = dev["initial"] if kept_initial else dev["prewrite_s"]
    # Every choice is made; only now the test rows are scored.
    chosen = {
        "initial": initial,
        "prewrite_i": prewrite_i,
        "prewrite_s": prewrite_s,
        "prewrite_s_or_initial": safe,
    } | {method: sel.best["instruction"] for method, sel in searched.items()}
    test_rows = task.eval_rows("test", cfg.test_examples, cfg.test_seed)
    on_test = scorer(list(chosen.values()), test_rows)
    test = dict(zip(chosen, on_test.metrics[metric], strict=True))
    # a transferred PRewrite-I costs no request on this task: its curve starts at 0 with its dev score
    head = rl_curve or [(0, dev["prewrite_i"])]
    curves = {"rl": best_so_far(head + selection.curve(offset=rl_spent))} | {m: s.curve() for m, s in searched.items()}
    spent = {"prewrite_i": rl_spent, "rl": rl_spent + selection.spent} | {m: sel.spent for m, sel in searched.items()}
    result = {
        "seed": seed,
        "task": task.name,
        "instructions": chosen,
        "dev": dev,
        "test": test,
        "task_llm_requests": spent,
        "budget": budget,
        # per search method: the requests its dev curve took to reach PRewrite-I's dev score (None: not within budget)
        "requests_to_match_prewrite_i": {m: requests_to_reach(curves[m], dev["prewrite_i"]) for m in searched},
        "candidates_scored": {"prewrite_s": len(selection.scored)} | {m: len(s.scored) for m, s in searched.items()},
        "dev_rows": len(dev_rows),
        "test_rows": len(test_rows),
        "curves": curves,
        "rl_run_id": (rl_dir / runs.RUN_ID_FILE).read_text().strip() if parent else None,
        "wall_s": {"search": round(time.perf_counter() - t0, 1)} | {f"search_{m}": w for m, w in wall.items()},
        "rewriter_usage": usage,  # per search method: the calls and tokens of what proposed (GEPA: its reflection)
        "candidates": {"prewrite_s": selection.scored} | {m: sel.scored for m, sel in searched.items()},
    }
    if client:
        rl_id = result["rl_run_id"]
        if rl_curve:  # training's own run holds its curve on the task it trained on
            for requests, value in curves["rl"]:
                client.log_metric(rl_id, CURVE_METRIC.format(metric=metric), value, step=requests)
        result["run_ids"] = {"rl": rl_id}
        for method in cfg.methods:
            result["run_ids"][method] = _log_search_run(client, parent, cfg, task, method, result)
        if cfg.register_prompts:
            _register_prompts(cfg, task, dev_rows, len(test_rows), result, parent)
        # every method's answer and score on each test row, side by side (the parent run's Artifacts tab)
        examples = examples_table(task, list(chosen), on_test, test_rows)
        name = "_".join(filter(None, ["test_examples", task_part(cfg, task), f"seed{seed}"]))
        client.log_table(parent, columns(examples), f"{name}.json")
    return result


def _log_search_run(client: MlflowClient, parent: str, cfg, task: Task, method: str, result: dict) -> str:
    """A child run for one baseline of one seed on one task: its curve, dev and test scores, every candidate."""
    metric, seed = task.metric, result["seed"]
    name = "-".join(filter(None, [method, task_part(cfg, task), f"seed{seed}"]))
    tags = {MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: name, "prewrite.method": method, "prewrite.task": task.name}
    run = client.create_run(client.get_run(parent).info.experiment_id, tags=tags)
    run_id = run.info.run_id
    client.log_param(run_id, "seed", seed)
    client.log_param(run_id, "budget", result["budget"])
    client.log_dict(run_id, OmegaConf.to_container(cfg[method], resolve=True), "search_config.json")
    fields = ("dev", "test", "task_llm_requests", "rewriter_usage", "candidates")
    one = {k: result[k][method] for k in fields} | {"curve": result["curves"][method]}
    baselines.log_search_run(client, run_id, method, metric, one | {"instruction": result["instructions"][method]})
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _register_prompts(cfg, task: Task, dev_rows: list[dict], n_test: int, result: dict, parent: str) -> None:
    """Each method's chosen instruction as a version of the task's prompt (the initial one and training's
    best are registered by the training itself)."""
    run_ids = {"prewrite_i": result["rl_run_id"], "prewrite_s": result["rl_run_id"]} | result["run_ids"]
    seed, chosen = result["seed"], []
    for m in ["prewrite_i", "prewrite_s", *cfg.methods]:
        origin = f"{LABELS[m]}, comparison run {parent}, seed {seed}"
        instruction, dev, test = result["instructions"][m], result["dev"][m], result["test"][m]
        chosen.append(prompt_registry.Chosen(instruction, m, run_ids[m], origin, dev, seed, test))
    scored = prompt_registry.scored_on(task.metric, dev_rows, cfg.task_backend, task)
    prompt_registry.register(cfg.logger.tracking_uri, task.name, chosen, scored, n_test)


def summarize(seeds: list[dict], metric: str, methods: list[str]) -> dict:
    """Per method: mean and sample std (n-1) over seeds of the dev and test scores."""

    def stats(values):
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    summary = {}
    for method in methods:
        dev_mean, dev_std = stats([s["dev"][method] for s in seeds])
        test_mean, test_std = stats([s["test"][method] for s in seeds])
        summary[method] = {"dev_mean": dev_mean, "dev_std": dev_std, "test_mean": test_mean, "test_std": test_std}
    summary["budget_mean"] = statistics.mean(s["budget"] for s in seeds)
    summary["metric"] = metric
    return summary


LABELS = {
    "initial": "initial instruction",
    "prewrite_i": "PRewrite-I (RL, greedy)",
    "prewrite_s": "PRewrite-S (RL, best of K on dev)",
    "prewrite_s_or_initial": "PRewrite-S or the initial instruction (best on dev)",
    "ape": "APE-style best-of-K (untrained rewriter)",
    "opro": "OPRO-style propose and select",
    "gepa": "GEPA (reflective prompt evolution, gepa package)",
}


def markdown(summary: dict, seeds: list[dict], task: Task, methods: list[str]) -> str:
    metric = summary["metric"]
    n = len(seeds)
    lines = [
        f"{task.name}: {metric}, mean ± std (n-1) over {n} seeds {[s['seed'] for s in seeds]}; "
        f"dev = {seeds[0]['dev_rows']} fixed dev rows per seed (all selection), "
        f"test = {seeds[0]['test_rows']} test rows per seed.",
        "",
        f"| method | dev {metric} | test {metric} | test per seed | task-LLM requests |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        s = summary[method]
        per_seed = " / ".join(f"{x['test'][method]:.3f}" for x in seeds)
        spent = {"prewrite_s": "rl", "prewrite_s_or_initial": "rl"}.get(method, method)
        requests = (
            " / ".join(str(x["task_llm_requests"][spent]) for x in seeds) if spent in seeds[0]["task_llm_requests"]
            else "0"
        )  # fmt: skip
        lines.append(
            f"| {LABELS[method]} | {s['dev_mean']:.3f} ± {s['dev_std']:.3f} "
            f"| {s['test_mean']:.3f} ± {s['test_std']:.3f} | {per_seed} | {requests} |"
        )
    searched = [m for m in methods if m in seeds[0]["requests_to_match_prewrite_i"]]
    if searched:
        lines += ["", "Task-LLM requests each search method took to reach PRewrite-I's dev score, per seed:", ""]
    for method in searched:
        cells = [x["requests_to_match_prewrite_i"][method] for x in seeds]
        spent = [x["task_llm_requests"][method] for x in seeds]
        cells = [f"not within {n}" if c is None else str(c) for c, n in zip(cells, spent, strict=True)]
        lines.append(f"- {LABELS[method]}: {' / '.join(cells)}")
    lines += ["", "Chosen instructions:", ""]
    for s in seeds:
        for method in methods[1:]:
            lines.append(f"- seed {s['seed']}, {LABELS[method]}: {s['instructions'][method]!r}")
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    with tool_main("compare"):
        compare(cfg)


if __name__ == "__main__":
    main()
