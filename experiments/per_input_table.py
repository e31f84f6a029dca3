"""Issue 23's per-input comparison table, from two experiments/per_input.sh output folders run at the same
training budget (task-level with MODES=task, per-input with MODES=input): per seed, the initial instruction,
task-level PRewrite-I and PRewrite-S, per-input PRewrite-I (dev / test), per-input minus task-level PRewrite-S
and minus PRewrite-S-or-initial on test (points), the share of flat groups in each training, the MLflow runs;
then mean ± std over the seeds both folders have.

    python experiments/per_input_table.py outputs/per_input_ag_news_20steps outputs/per_input_ag_news_g8_20steps
"""

import json
import statistics
import sys
from pathlib import Path

from eval_runs import evaluation_runs, mean_std
from mlflow import MlflowClient


def _scores(folder: Path, mode: str, seed: str) -> dict[str, tuple[float, float]] | None:
    """method -> (dev, test) of one evaluation, or None when it has not run."""
    reports = list(folder.glob(f"eval/*_{mode}/{seed}/evaluation.json"))
    if not reports:
        return None
    scores = {}
    for row in json.loads(reports[0].read_text())["results"]:
        dev, test = (row[k] for k in row if k.startswith(("dev_", "test_")))
        scores[row["method"]] = (dev, test)
    return scores


def _runs(
    folder: Path, mode: str, seed: str, client: MlflowClient, evaluations: dict[Path, str]
) -> tuple[str, str, float]:
    """(training run, evaluation run, mean share of flat groups over the training's steps)."""
    train_dir = folder / "train" / mode / seed
    train = (train_dir / "mlflow_run_id").read_text().strip()
    flat = statistics.fmean(m.value for m in client.get_metric_history(train, "train/frac_reward_zero_std"))
    return train, evaluations.get(train_dir.resolve(), "-"), flat


def _evaluations(folder: Path) -> tuple[MlflowClient, dict[Path, str]]:
    """The folder's MLflow client and its evaluation runs by the training folder they evaluated."""
    client, runs = evaluation_runs(folder)
    # the evaluation's rewriter_path is relative to the repository root, where these scripts run
    return client, {Path(r.data.params["rewriter_path"]).resolve(): r.info.run_id for r in runs}


def main(task_folder: Path, input_folder: Path) -> None:
    folders = ((task_folder, "task"), (input_folder, "input"))
    trained = [{p.name for p in f.glob(f"train/{m}/seed*")} for f, m in folders]
    seeds = sorted(set.intersection(*trained), key=lambda s: int(s.removeprefix("seed")))
    print(
        "| seed | initial dev / test | task-level PRewrite-I dev / test | task-level PRewrite-S dev / test "
        "| per-input PRewrite-I dev / test | per-input minus PRewrite-S (test) | minus PRewrite-S-or-initial (test) "
        "| flat groups (task / input) | task-level training / evaluation | per-input training / evaluation |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    columns: dict[str, list[float]] = {}
    stores = {task_folder: _evaluations(task_folder), input_folder: _evaluations(input_folder)}
    for seed in seeds:
        task, per_input = _scores(task_folder, "task", seed), _scores(input_folder, "input", seed)
        if task is None or per_input is None:
            print(f"| {seed.removeprefix('seed')} | (an evaluation has not run) |")
            continue
        t_runs = _runs(task_folder, "task", seed, *stores[task_folder])
        i_runs = _runs(input_folder, "input", seed, *stores[input_folder])
        values = {
            "initial": task["initial"], "task_i": task["prewrite_i"], "task_s": task["prewrite_s"],
            "input_i": per_input["prewrite_i"],
        }  # fmt: skip
        diff = 100 * (values["input_i"][1] - values["task_s"][1])
        diff_or = 100 * (values["input_i"][1] - task["prewrite_s_or_initial"][1])
        for name, (dev, test) in values.items():
            columns.setdefault(f"{name}_dev", []).append(dev)
            columns.setdefault(f"{name}_test", []).append(test)
        for name, v in (("diff", diff), ("diff_or", diff_or), ("flat_task", t_runs[2]), ("flat_input", i_runs[2])):
            columns.setdefault(name, []).append(v)
        pairs = " | ".join(f"{dev:.3f} / {test:.3f}" for dev, test in values.values())
        print(
            f"| {seed.removeprefix('seed')} | {pairs} | {diff:+.1f} | {diff_or:+.1f} "
            f"| {t_runs[2]:.2f} / {i_runs[2]:.2f} | `{t_runs[0]}` / `{t_runs[1]}` | `{i_runs[0]}` / `{i_runs[1]}` |"
        )
    if not columns:
        return
    n = len(columns["diff"])
    pairs = " | ".join(f"{mean_std(columns[f'{m}_dev'])} / {mean_std(columns[f'{m}_test'])}" for m in values)
    print(
        f"| {n} seeds, mean ± std | {pairs} | {mean_std(columns['diff'], 1, '+')} "
        f"| {mean_std(columns['diff_or'], 1, '+')} "
        f"| {mean_std(columns['flat_task'], 2)} / {mean_std(columns['flat_input'], 2)} | | |"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
