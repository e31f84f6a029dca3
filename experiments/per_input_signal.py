"""Is there a per-input GRPO signal, and does the rollout temperature change it? (issue 23, no training)

A per-input group is G rewrites of one (instruction, input) pair, each scored on that input: with the
`accuracy` reward a group whose G answers are all right or all wrong gives no advantage. Per temperature,
on the same seeded train rows, G rewrites per input are sampled from the untrained rewriter with
training's `input_meta_prompt` and scored as training scores them (constrained by default). Reported:
the share of flat groups (what `train/frac_reward_zero_std` logs), how many distinct rewrites a group
holds, the share of groups where the rewrites give different answers (the ones that can teach), the mean
accuracy of the rewrites and of the initial instruction on the same rows, the best-of-G accuracy (the
headroom a perfect ranking could reach), and the within-group spread of `label_prob`.

    python experiments/per_input_signal.py --out experiments/per_input_signal_ag_news.json -- task=ag_news
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from prewrite import precision, rewriter_model
from prewrite.backends import build_backend
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def group_stats(rewrites: list[str], correct: list[float], probs: list[float], answers: list[str]) -> dict:
    return {
        "flat": len(set(correct)) == 1,
        "distinct_rewrites": len(set(rewrites)),
        "distinct_answers": len(set(answers)),
        "mean_correct": statistics.fmean(correct),
        "best_correct": max(correct),
        "label_prob_std": statistics.pstdev(probs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0, 1.3, 1.6])
    parser.add_argument("--rows", type=int, default=64, help="seeded train rows, one group each")
    parser.add_argument("--generations", type=int, default=4, help="G, rewrites per input (training's default)")
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. task=ag_news")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        setting = ["task_backend.constrained=true", "rewrite_mode=input"]
        cfg = compose(config_name="train", overrides=[*setting, *args.overrides])
    precision.resolve_config(cfg)
    task = load_task(cfg.task)
    backend = build_backend(cfg.task_backend, cfg.cache, task)
    scorer = RewriteScorer(task, backend, ["accuracy"], [1.0], report=["label_prob"])
    rewriter = rewriter_model.load_untrained(cfg.rewriter.model_name_or_path)
    rows = task.sample("train", args.rows, seed=[cfg.seed, 2000])
    inputs = [task.input_text(row) for row in rows]
    initial = scorer.score_groups([[(task.instruction, row)] for row in rows])
    initial_accuracy = statistics.fmean(initial.metrics["accuracy"])
    print(f"initial instruction on the {len(rows)} rows: accuracy {initial_accuracy:.3f}", flush=True)

    g = args.generations
    results = {}
    for temperature in args.temperatures:
        L.seed_everything(cfg.seed)  # the same random stream for every temperature
        rewrites = rewriter.rewrite_each(
            task.instruction, cfg.input_meta_prompt, inputs, cfg.algorithm.max_completion_length,
            num=g, temperature=temperature,
        )  # fmt: skip
        scores = scorer.score_groups([[(rw, rows[i // g])] for i, rw in enumerate(rewrites)])
        groups = []
        for k in range(len(rows)):
            part = slice(k * g, (k + 1) * g)
            answers = [a[0] for a in scores.answers[part]]
            accuracy, prob = scores.metrics["accuracy"][part], scores.metrics["label_prob"][part]
            groups.append(group_stats(rewrites[part], accuracy, prob, answers))
        summary = {
            "flat_groups": statistics.fmean(s["flat"] for s in groups),
            "distinct_rewrites_per_group": statistics.fmean(s["distinct_rewrites"] for s in groups),
            "groups_with_differing_answers": statistics.fmean(s["distinct_answers"] > 1 for s in groups),
            "rewrite_accuracy": statistics.fmean(s["mean_correct"] for s in groups),
            "best_of_g_accuracy": statistics.fmean(s["best_correct"] for s in groups),
            "label_prob_std_within_group": statistics.fmean(s["label_prob_std"] for s in groups),
            "mean_rewrite_words": statistics.fmean(len(rw.split()) for rw in rewrites),
        }
        results[str(temperature)] = {"summary": summary, "examples": rewrites[: 2 * g]}
        print(f"T={temperature}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
    if args.out:
        machine = {"platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "precision": dict(cfg.get("precision_auto", {}))}  # fmt: skip
        record = {"args": vars(args), "machine": machine, "rows": len(rows), "initial_accuracy": initial_accuracy,
                  "temperatures": results}  # fmt: skip
        Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
