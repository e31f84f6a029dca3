"""The per-seed table of experiments/constrained.sh and constrained_search.sh (issue 18): dev and test of
the initial instruction, PRewrite-I, PRewrite-S and each search method, and the paired differences on
test (mean ± sample std over seeds, in points). Refuses folders whose runs did not score the initial
instruction alike on test: their test rows would differ.

    python experiments/constrained_table.py outputs/ag_news_fixed

Folders: `<out>/eval_seed<S>/evaluation.json` (prewrite.evaluate), `<out>/<method>_seed<S>/search.json`
(prewrite.search).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SEARCH = ("ape", "opro", "gepa")
PAIRS = [("prewrite_i", "initial"), ("prewrite_s", "initial")] + [("prewrite_s", m) for m in SEARCH]


def seed_scores(out: Path, seed: str) -> dict[str, tuple[float, float, str]]:
    """method -> (dev, test, instruction) for one seed's runs."""
    scores = {}
    for row in json.loads((out / f"eval_seed{seed}" / "evaluation.json").read_text())["results"]:
        dev, test = (row[k] for k in row if k.startswith(("dev_", "test_")))
        scores[row["method"]] = (dev, test, row["instruction"])
    for method in SEARCH:
        path = out / f"{method}_seed{seed}" / "search.json"
        if path.exists():
            result = json.loads(path.read_text())
            if result["test_initial"] != scores["initial"][1]:
                raise SystemExit(
                    f"{path}: the initial instruction scored {result['test_initial']} on test, "
                    f"{scores['initial'][1]} in eval_seed{seed}: not the same test rows"
                )
            scores[method] = (result["dev"], result["test"], result["instruction"])
    return scores


def mean_std(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values) * scale:+.{digits}f} ± {std * scale:.{digits}f}"


def main(out: Path) -> None:
    folders = out.glob("eval_seed*/evaluation.json")
    seeds = sorted((p.parent.name.removeprefix("eval_seed") for p in folders), key=int)
    table = {seed: seed_scores(out, seed) for seed in seeds}
    methods = list(dict.fromkeys(m for scores in table.values() for m in scores))
    print("| seed | " + " | ".join(f"{m} dev / test" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for seed, scores in table.items():
        cells = [f"{scores[m][0]:.3f} / {scores[m][1]:.3f}" if m in scores else "—" for m in methods]
        print(f"| {seed} | " + " | ".join(cells) + " |")
    means = []
    for m in methods:
        have = [s[m] for s in table.values() if m in s]
        dev, test = [d for d, _, _ in have], [t for _, t, _ in have]
        means.append(f"{mean_std(dev).lstrip('+')} / **{mean_std(test).lstrip('+')}** ({len(have)})")
    print("| mean ± std (seeds) | " + " | ".join(means) + " |")
    print("\nPaired on test, points (per seed; mean ± std):")
    for a, b in PAIRS:
        diffs = [s[a][1] - s[b][1] for s in table.values() if a in s and b in s]
        if diffs:
            per_seed = ", ".join(f"{d * 100:+.1f}" for d in diffs)
            print(f"- {a} − {b}: {per_seed} ({mean_std(diffs, 100, 1)}, {len(diffs)} seeds)")
    print("\nInstructions:")
    for seed, scores in table.items():
        for m, (_, _, text) in scores.items():
            print(f"- seed {seed} {m}: {text!r}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
