"""Where a classification result comes from: per evaluation run in an output folder's MLflow store, each
method's share of answers per label, its accuracy on the rows of each gold label, and their mean (balanced
accuracy), from the run's test_examples.json. An instruction can gain accuracy only by moving the task
model's answers toward the more frequent label; balanced accuracy does not pay for that. Diagnosis of
figures already reported: nothing is chosen on it.

    python experiments/answers_by_label.py outputs/per_input_sst2_20steps outputs/per_input_sst2_g8_20steps
"""

import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from eval_runs import evaluation_runs, mean_std


def _evaluations(folder: Path) -> list[tuple[str, dict, list[dict]]]:
    """(run id, params, rows of test_examples.json) of every evaluation run in `folder`'s MLflow store."""
    client, runs = evaluation_runs(folder)
    found = []
    for run in runs:
        with tempfile.TemporaryDirectory() as tmp:
            table = json.loads(Path(client.download_artifacts(run.info.run_id, "test_examples.json", tmp)).read_text())
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        found.append((run.info.run_id, run.data.params, rows))
    return sorted(found, key=lambda f: int(f[1].get("seed", 0)))


def _shares(values: list[str], labels: list[str]) -> str:
    counts = Counter(values)
    return " / ".join(f"{counts[label] / len(values):.2f}" for label in labels)


def main(folders: list[Path]) -> None:
    balanced: dict[tuple[str, str], list[float]] = {}
    for folder in folders:
        for i, (run_id, params, rows) in enumerate(_evaluations(folder)):
            labels = sorted({r["gold"] for r in rows})
            methods = [c.removesuffix("_answer") for c in rows[0] if c.endswith("_answer")]
            if not balanced:
                print(f"| folder | seed | method | answers ({' / '.join(labels)}) | accuracy per gold label | balanced "
                      f"accuracy | accuracy | evaluation |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
            if i == 0:
                print(f"| {folder.name} | | gold | {_shares([r['gold'] for r in rows], labels)} | | | | |")
            for method in methods:
                metric = f"{method}_accuracy"
                per_label = [statistics.fmean(r[metric] for r in rows if r["gold"] == label) for label in labels]
                balanced.setdefault((folder.name, method), []).append(statistics.fmean(per_label))
                answers = _shares([r[f"{method}_answer"] for r in rows], labels)
                print(
                    f"| {folder.name} | {params.get('seed')} | {method} | {answers} "
                    f"| {' / '.join(f'{a:.2f}' for a in per_label)} | {statistics.fmean(per_label):.3f} "
                    f"| {statistics.fmean(r[metric] for r in rows):.3f} | `{run_id}` |"
                )
    print("\n| folder | method | runs | balanced accuracy, mean ± std |\n|---|---|---|---|")
    for (name, method), values in balanced.items():
        print(f"| {name} | {method} | {len(values)} | {mean_std(values)} |")


if __name__ == "__main__":
    main([Path(f) for f in sys.argv[1:]])
