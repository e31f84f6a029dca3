"""Does a trained per-input rewriter write for its input? (issue 23, no training, dev rows only)

`prewrite.evaluate` keeps the greedy rewrite of every dev input of a per-input rewriter (evaluation.json's
`candidates`). Each is scored here on its own input, as the evaluation scored it, and on other inputs of the
same dev rows (a few seeded derangements: every rewrite moved to another row). If the rewrites serve their
own inputs, the matched score is above the shuffled one; if they score the same, what the rewriter learned
is a distribution of instructions for the task, not a rewrite for each input. Two readings of what a matched
rewrite carries: a control that needs no rewriter (the initial instruction followed by the input again, as
if the rewrite only restated it), and, for classification, the label a rewrite names (its first verbalizer)
against the gold one: a rewriter that classifies the input itself and says so. Also the share of the
input's words (4+ letters) that the rewrite repeats. Test rows are never read.

    python experiments/per_input_specificity.py --out experiments/per_input_specificity_ag_news.json \
        outputs/per_input_ag_news_g8/eval/ag_news_input/seed* -- task=ag_news
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from prewrite import precision
from prewrite.backends import build_backend
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def derangement(n: int, rng: random.Random) -> list[int]:
    """A permutation of range(n) that moves every index (by rejection: about e tries)."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{4,}", text.lower()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluations", nargs="+", help="prewrite.evaluate run folders of per-input rewriters (seed<k>)")
    parser.add_argument("--shuffles", type=int, default=4, help="seeded derangements per evaluation")
    parser.add_argument("--out", default=None)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1 :]  # after --: evaluate config overrides
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["task_backend.constrained=true", *overrides])
    precision.resolve_config(cfg)
    task = load_task(cfg.task)
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [task.metric], [1.0])

    runs = []
    for folder in map(Path, args.evaluations):
        seed = int(re.search(r"seed(\d+)$", folder.name).group(1))
        record = json.loads((folder / "evaluation.json").read_text())
        candidates = record["candidates"]
        rows = task.eval_rows("dev", len(candidates), seed)  # the rows evaluate drew for this seed
        if [c["input"] for c in candidates] != [task.input_text(r) for r in rows]:
            raise SystemExit(f"{folder}: its dev inputs are not the {len(rows)} seeded dev rows of seed {seed}")
        rewrites = [c["instruction"] for c in candidates]
        rng = random.Random(seed)
        orders = [list(range(len(rows)))] + [derangement(len(rows), rng) for _ in range(args.shuffles)]
        restated = [(f"{task.instruction}\n{task.input_text(row)}", row) for row in rows]
        groups = [[(rewrites[j], row) for j, row in zip(order, rows, strict=True)] for order in orders] + [restated]
        matched, *shuffled, restated_score = scorer.score_groups(groups).metrics[task.metric]
        named = [task.parse(text) for text in rewrites] if task.kind == "classification" else []
        right = [label == task.gold(row) for label, row in zip(named, rows, strict=True) if label is not None]
        repeated = [len(words(text) & words(task.input_text(row))) / max(1, len(words(task.input_text(row))))
                    for text, row in zip(rewrites, rows, strict=True)]  # fmt: skip
        logged = {r["method"]: r[f"dev_{task.metric}"] for r in record["results"]}
        runs.append({
            "evaluation": str(folder), "seed": seed, "rows": len(rows),
            "initial_dev": logged["initial"], "logged_dev": logged["prewrite_i"],
            "matched": matched, "shuffled": shuffled, "shuffled_mean": statistics.fmean(shuffled),
            "matched_minus_shuffled": matched - statistics.fmean(shuffled),
            "restated_control": restated_score,
            "share_naming_a_label": len(right) / len(rows) if named else None,
            "named_label_accuracy": statistics.fmean(right) if right else None,
            "input_words_repeated": statistics.fmean(repeated),
        })  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)

    gaps = [r["matched_minus_shuffled"] for r in runs]
    record = {
        "machine": {"platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "task": task.name,
        "overrides": overrides,
        "runs": runs,
        "summary": {
            "matched_mean": statistics.fmean(r["matched"] for r in runs),
            "shuffled_mean": statistics.fmean(r["shuffled_mean"] for r in runs),
            "gap_mean": statistics.fmean(gaps),
            "gap_std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
            "restated_control_mean": statistics.fmean(r["restated_control"] for r in runs),
            "input_words_repeated_mean": statistics.fmean(r["input_words_repeated"] for r in runs),
        },
    }
    print(json.dumps(record["summary"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
