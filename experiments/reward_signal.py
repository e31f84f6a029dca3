"""Is there a GRPO signal? Two measurements on the embedded model, no training (issue 18, item 1).

1. Signal to noise: G rewrites sampled from the untrained rewriter (the first step's group) are each
   scored on R independent samples of M train rows, for M in --examples. Per reward: the spread
   between the rewrites (std over the group of each rewrite's reward, averaged over the R samples)
   against one rewrite's standard error over its M examples (averaged over rewrites and samples).
   Their ratio is what `train/reward_snr` logs during training; below ~1 the group's ranking (the
   advantages) is mostly which examples were drawn.
2. Agreement: instructions (the hand-written ones of issue 18 and the G samples) scored on fixed dev
   rows by greedy accuracy, constrained accuracy (argmax of the label likelihoods) and the dense
   rewards; Spearman rank correlation of each with greedy accuracy and with constrained accuracy.

    python experiments/reward_signal.py --out experiments/reward_signal_sst2.json
    python experiments/reward_signal.py task=ag_news --out experiments/reward_signal_ag_news.json
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
REWARDS = ["accuracy", "label_prob", "label_margin"]
HAND_WRITTEN = {
    "sst2": [
        "Is the sentiment of this movie review positive or negative? Answer with one word: positive or negative.",
        "Decide whether the following sentence expresses a positive or a negative opinion. "
        "Reply with positive or negative only.",
        "Read the sentence and answer 'positive' if the writer likes the movie, otherwise 'negative'.",
        "Sentiment (positive/negative):",
        "Classify the sentiment of the sentence as positive or negative. Examples: 'a wonderful, moving film' -> "
        "positive; 'a boring, predictable mess' -> negative.",
        "You are a movie critic. Say whether the review below is positive or negative.",
    ],
    "ag_news": [
        "Classify the news article into one of four topics: World, Sports, Business or Sci/Tech. "
        "Answer with the topic name only.",
        "Which section of a newspaper would this article appear in: World, Sports, Business, or Sci/Tech?",
        "Topic:",
    ],
}


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=x.__getitem__)
        r = [0.0] * len(x)
        i = 0
        while i < len(order):  # ties share their mean rank
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / den if den else float("nan")


def standard_error(values: list[float | None]) -> float:
    v = [x for x in values if x is not None]
    return statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--repeats", type=int, default=3, help="independent example samples per M")
    parser.add_argument("--dev-rows", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. task=ag_news")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        greedy = ["cache.enabled=false", "task_backend.constrained=false"]  # the "greedy accuracy" column decodes
        cfg = compose(config_name="train", overrides=[*greedy, *args.overrides])
    precision.resolve_config(cfg)
    L.seed_everything(cfg.seed)
    task = load_task(cfg.task)
    backend = build_backend(cfg.task_backend, cfg.cache, task)
    scorer = RewriteScorer(task, backend, REWARDS, [1.0] * len(REWARDS))
    rewriter = rewriter_model.load_untrained(cfg.rewriter.model_name_or_path)
    group = rewriter.rewrite(
        task.instruction, cfg.meta_prompt, cfg.algorithm.num_generations, cfg.algorithm.temperature,
        cfg.algorithm.max_completion_length,
    )  # fmt: skip

    snr = {}
    for m in args.examples:
        between, noise = {r: [] for r in REWARDS}, {r: [] for r in REWARDS}
        for rep in range(args.repeats):
            scores = scorer(group, task.sample("train", m, seed=[cfg.seed, 1000 + rep]))
            for r in REWARDS:
                values = [v for v in scores.metrics[r] if v is not None]
                between[r].append(statistics.stdev(values) if len(values) > 1 else float("nan"))
                noise[r] += [standard_error(per) for per in scores.per_example[r]]
        snr[m] = {
            r: {
                "between_rewrites_std": statistics.fmean(between[r]),
                "within_rewrite_se": statistics.fmean(noise[r]),
                "snr": statistics.fmean(between[r]) / statistics.fmean(noise[r]),
            }
            for r in REWARDS
        }
        print(f"M={m}: " + "; ".join(f"{r} snr {v['snr']:.2f}" for r, v in snr[m].items()), flush=True)

    instructions = list(dict.fromkeys([task.instruction, *HAND_WRITTEN.get(task.name, []), *group]))
    dev = task.eval_rows("dev", args.dev_rows, cfg.seed)
    scores = scorer(instructions, dev)
    labels = list(task.labels)
    constrained = []
    for lls_of_rewrite in scores.per_example["label_prob"]:
        constrained.append(statistics.fmean(1.0 if p is not None and p > 0.5 else 0.0 for p in lls_of_rewrite))
    if len(labels) > 2:  # argmax over more labels: recompute from the likelihoods
        prompts = [task.prompt(i, r) for i in instructions for r in dev]
        names = list(task.labels.values())
        lls = backend.loglikelihood([p for p in prompts for _ in names], names * len(prompts))
        hits = [
            labels[max(range(len(names)), key=lambda j: lls[k * len(names) + j])] == task.gold(dev[k % len(dev)])
            for k in range(len(prompts))
        ]
        constrained = [statistics.fmean(hits[i * len(dev) : (i + 1) * len(dev)]) for i in range(len(instructions))]
    table = [
        {"instruction": ins, "greedy_accuracy": scores.metrics["accuracy"][i], "constrained_accuracy": constrained[i]}
        | {r: scores.metrics[r][i] for r in REWARDS[1:]}
        for i, ins in enumerate(instructions)
    ]
    greedy = [row["greedy_accuracy"] for row in table]
    agreement = {
        name: {"vs_greedy": spearman([row[name] for row in table], greedy),
               "vs_constrained": spearman([row[name] for row in table], constrained)}
        for name in ("constrained_accuracy", *REWARDS[1:])
    }  # fmt: skip
    for row in sorted(table, key=lambda r: -r["greedy_accuracy"]):
        print(
            f"{row['greedy_accuracy']:.3f} {row['constrained_accuracy']:.3f} {row['label_prob']:.3f}  "
            f"{row['instruction'][:90]!r}"
        )
    print(json.dumps(agreement, indent=1))
    if args.out:
        machine = {"platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "precision": dict(cfg.get("precision_auto", {}))}  # fmt: skip
        record = {"args": vars(args), "machine": machine, "group": group, "snr": snr, "dev_rows": len(dev),
                  "instructions": table, "agreement": agreement}  # fmt: skip
        Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
