"""The PNG plots: what they draw from a rewrites table and an evaluation table."""

import math

from prewrite import plots

ROWS = [
    {"step": 0, "split": "initial", "rewrite": "Classify.", "reward": 0.5, "accuracy": 0.5},
    {"step": 0, "split": "dev", "rewrite": "a", "reward": 0.25, "accuracy": 0.25},
    {"step": 1, "split": "train", "rewrite": "b", "reward": 0.0, "accuracy": 0.0},
    {"step": 1, "split": "train", "rewrite": "c", "reward": 1.0, "accuracy": 1.0},
    {"step": 1, "split": "train", "rewrite": "d", "reward": None, "accuracy": None},  # no computable reward
    {"step": 1, "split": "dev", "rewrite": "e", "reward": 0.75, "accuracy": 0.75},
    {"step": 2, "split": "train", "rewrite": "f", "reward": 0.5, "accuracy": 0.5},
    {"step": 2, "split": "dev", "rewrite": "g", "reward": math.nan, "accuracy": math.nan},
]


def test_reward_and_dev_draws_mean_reward_and_dev_score_per_step(tmp_path):
    fig = plots.reward_and_dev(ROWS, "accuracy")
    top, bottom = fig.axes
    mean = top.get_lines()[0]
    assert list(mean.get_xdata()) == [1, 2] and list(mean.get_ydata()) == [0.5, 0.5]  # None left out
    assert len(top.collections[0].get_offsets()) == 3  # every scored rewrite as a point
    dev, initial = bottom.get_lines()
    assert list(dev.get_xdata()) == [0, 1] and list(dev.get_ydata()) == [0.25, 0.75]  # NaN left out
    assert list(initial.get_ydata()) == [0.5, 0.5]
    path = plots.save(fig, tmp_path / "plots" / "reward_dev.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_methods_draws_dev_and_test_bars_per_method():
    table = [
        {"method": "initial", "dev_accuracy": 0.5, "test_accuracy": 0.4},
        {"method": "prewrite_i", "dev_accuracy": 0.6, "test_accuracy": None},
        {"method": "prewrite_s", "dev_accuracy": 0.7, "test_accuracy": 0.65},
    ]
    ax = plots.methods(table, "accuracy").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["initial instruction", "PRewrite-I", "PRewrite-S"]
    dev, test = ax.containers
    assert [b.get_height() for b in dev] == [0.5, 0.6, 0.7]
    assert [b.get_height() for b in test] == [0.4, 0.0, 0.65]
    assert "n/a" in [t.get_text() for t in ax.texts]  # a missing score is labelled, not shown as 0
