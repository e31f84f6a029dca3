"""The table of experiments/transfer.sh (and per_input.sh): mean ± std over seeds of each method's dev
and test score per evaluated task, from the run folders' evaluation.json.

    python experiments/transfer_table.py outputs/transfer
"""

import json
import statistics
import sys
from pathlib import Path


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


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {std:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/transfer"))
