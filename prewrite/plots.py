"""The PNG plots logged to MLflow: a training run's reward and dev score against the step, and an
evaluation's initial instruction vs PRewrite-I vs PRewrite-S.

Figures are built with matplotlib's object API (no pyplot): no global state and no display backend,
so they render the same headless, in sweep workers and in threads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

METHOD_LABELS = {
    "initial": "initial instruction",
    "prewrite_i": "PRewrite-I",
    "prewrite_s": "PRewrite-S",
    "prewrite_s_or_initial": "PRewrite-S or initial",
}


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def reward_and_dev(rows: list[dict], monitor: str) -> Figure:
    """From the rewrites table (prewrite.lightning_module's rewrite_rows): top, every sampled rewrite's reward
    and their mean per step; bottom, the greedy rewrite's dev `monitor` per step, with the initial
    instruction's as a reference line."""
    rewards = defaultdict(list)
    for r in rows:
        if r["split"] == "train" and _finite(r["reward"]):
            rewards[r["step"]].append(r["reward"])
    dev = sorted((r["step"], r[monitor]) for r in rows if r["split"] == "dev" and _finite(r.get(monitor)))
    initial = [r[monitor] for r in rows if r["split"] == "initial" and _finite(r.get(monitor))]

    fig = Figure(figsize=(7, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = sorted(rewards)
    top.scatter([s for s in steps for _ in rewards[s]], [v for s in steps for v in rewards[s]], s=12, alpha=0.4,
                label="sampled rewrites")  # fmt: skip
    top.plot(steps, [sum(rewards[s]) / len(rewards[s]) for s in steps], marker="o", label="mean")
    top.set_ylabel("train reward")
    top.legend(loc="best")
    bottom.plot([s for s, _ in dev], [v for _, v in dev], marker="o", label="greedy rewrite (PRewrite-I)")
    if initial:
        bottom.axhline(initial[0], linestyle="--", color="gray", label="initial instruction")
    bottom.set_ylabel(f"dev {monitor}")
    bottom.set_xlabel("step")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole rollout steps
    bottom.legend(loc="best")
    return fig


def methods(table: list[dict], metric: str) -> Figure:
    """Bars of dev and test `metric` for each evaluated method (prewrite.evaluate's table)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    width = 0.38
    xs = range(len(table))
    for offset, split in ((-width / 2, "dev"), (width / 2, "test")):
        values = [row[f"{split}_{metric}"] for row in table]
        bars = ax.bar([x + offset for x in xs], [v if _finite(v) else 0.0 for v in values], width, label=split)
        ax.bar_label(bars, labels=[f"{v:.3f}" if _finite(v) else "n/a" for v in values], fontsize=8)
    ax.set_xticks(list(xs), [METHOD_LABELS.get(row["method"], row["method"]) for row in table])
    ax.set_ylabel(metric)
    ax.legend(loc="lower right")
    return fig


def budget_curves(curves: list[dict[str, list[tuple[int, float]]]], metric: str) -> Figure:
    """Dev `metric` of each method's best instruction so far against the task-LLM requests spent (the
    rollouts-to-accuracy curve): one thin step line per seed, the mean over seeds in bold (on the union
    of the seeds' x values; a seed counts from its first point on)."""
    labels = {"rl": "PRewrite (RL)", "ape": "APE-style best-of-K", "opro": "OPRO-style", "gepa": "GEPA"}
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, method in enumerate(labels):
        color = f"C{i}"
        per_seed = [c[method] for c in curves if c.get(method)]
        if not per_seed:  # a method the comparison did not run
            continue
        for curve in per_seed:
            ax.step([x for x, _ in curve], [y for _, y in curve], where="post", color=color, alpha=0.3, lw=1)
        xs = sorted({x for curve in per_seed for x, _ in curve})
        mean = []
        for x in xs:
            ys = [max((y for cx, y in curve if cx <= x), default=None) for curve in per_seed]
            ys = [y for y in ys if y is not None]
            mean.append(sum(ys) / len(ys))
        ax.step(xs, mean, where="post", color=color, lw=2.2, label=f"{labels[method]} (mean of {len(per_seed)})")
    ax.set_xlabel("task-LLM requests spent (prompts scored: training rewards + dev evaluations)")
    ax.set_ylabel(f"dev {metric} of the best instruction so far")
    ax.legend(loc="lower right")
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
