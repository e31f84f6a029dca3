"""The table of experiments/transfer.sh (and per_input.sh): mean ± std over seeds of each method's dev
and test score per evaluated task, from the run folders' evaluation.json; with transfer_search.sh's
runs, each search method's test score at its budget and the task-model requests its dev curve took to
reach the transferred PRewrite-I's dev score (same dev rows, same seed).

    python experiments/transfer_table.py outputs/transfer
"""

import json
import statistics
import sys
from pathlib import Path

from prewrite.selection import requests_to_reach


def main(out: Path) -> None:
    by_task: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for report in sorted(out.glob("eval/*/seed*/evaluation.json")):
        task = report.parent.parent.name
        for row in json.loads(report.read_text())["results"]:
            dev, test = (row[k] for k in row if k.startswith(("dev_", "test_")))
            by_task.setdefault(task, {}).setdefault(row["method"], []).append((dev, test))
    print("| task | method | seeds | dev | test |\n|---|---|---|---|---|")
    for task, methods in by_task.items():
        for method, scores in methods.items():
            cells = [_mean_std([s[i] for s in scores]) for i in (0, 1)]
            print(f"| {task} | {method} | {len(scores)} | {cells[0]} | {cells[1]} |")
    searched = sorted(out.glob("search/*/*/seed*/search.json"))
    if searched:
        print("\n| task | method | seed | budget | test | requests to reach PRewrite-I's dev (its dev) |")
        print("|---|---|---|---|---|---|")
    for path in searched:
        result, seed = json.loads(path.read_text()), path.parent.name
        task, method = path.parent.parent.parent.name, path.parent.parent.name
        target = _prewrite_i_dev(out / "eval" / task / seed / "evaluation.json")
        reached = requests_to_reach(result["curve"], target)
        needed = f"{reached}" if reached is not None else f"not within {result['task_llm_requests']}"
        print(f"| {task} | {method} | {seed} | {result['budget']} | {result['test']:.3f} | {needed} ({target:.3f}) |")


def _prewrite_i_dev(report: Path) -> float:
    rows = json.loads(report.read_text())["results"]
    row = next(r for r in rows if r["method"] == "prewrite_i")
    return next(v for k, v in row.items() if k.startswith("dev_"))


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {std:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/transfer"))
