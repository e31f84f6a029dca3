"""Budget curves of the constrained-setting comparison (issues 18 and 19): for each seed, the best dev
score found so far against the task-model requests spent, for RL (its dev evaluations during training,
then PRewrite-S's selection among its samples) and for each search method (APE, OPRO, GEPA; their
`search.json`). Prints the mean over seeds at a few budgets and draws `prewrite.plots.budget_curves`.

    python experiments/constrained_curves.py --rl outputs/sst2_constrained_lr5e-5 \
        --search outputs/r18_constrained --png experiments/sst2_sentences_constrained/curves_constrained.png

Folders: `<rl>/seed<S>/rewrites.jsonl` (training), `<rl>/eval_seed<S>/evaluation.json` (PRewrite-S's
candidates, scored in that order after training), `<search>/<method>_seed<S>/search.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from prewrite import plots
from prewrite.selection import best_so_far

METHODS = ("ape", "opro", "gepa")


def rl_curve(rl: Path, seed: int, dev_rows: int) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (rl / f"seed{seed}" / "rewrites.jsonl").read_text().splitlines()]
    points = [(int(r["task_llm_requests"]), r["dev_score"]) for r in rows if r["split"] == "dev"]
    spent = points[-1][0]
    candidates = json.loads((rl / f"eval_seed{seed}" / "evaluation.json").read_text())["candidates"]
    points += [(spent + dev_rows * (i + 1), c["dev_accuracy"]) for i, c in enumerate(candidates)]
    return best_so_far(points)


def at(curve: list[tuple[int, float]], requests: int) -> float | None:
    return max((y for x, y in curve if x <= requests), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rl", type=Path, required=True)
    parser.add_argument("--search", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    curves = []
    for seed in args.seeds:
        found = {
            m: json.loads(p.read_text())
            for m in METHODS
            if (p := args.search / f"{m}_seed{seed}" / "search.json").exists()
        }
        dev_rows = next(iter(found.values()))["dev_rows"]
        curves.append(
            {"rl": rl_curve(args.rl, seed, dev_rows)} | {m: [tuple(p) for p in r["curve"]] for m, r in found.items()}
        )
    budgets = sorted({512, 1024, 2048, max(x for c in curves for curve in c.values() for x, _ in curve)})
    print("| method | " + " | ".join(f"best dev by {b} requests" for b in budgets) + " |")
    print("|---" * (len(budgets) + 1) + "|")
    for method in ["rl", *METHODS]:
        cells = []
        for b in budgets:
            values = [at(c[method], b) for c in curves if method in c]
            values = [v for v in values if v is not None]
            cells.append(
                f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)})"
                if len(values) > 1
                else "-"
            )
        print(f"| {method} | " + " | ".join(cells) + " |")
    if args.png:
        print(plots.save(plots.budget_curves(curves, "accuracy"), args.png))


if __name__ == "__main__":
    main()
