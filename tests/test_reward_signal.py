"""The GRPO signal diagnosis: reward spread within a group against one rewrite's sampling noise."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from prewrite.lightning_module import reward_signal
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task
from tests.conftest import CONF
from tests.fake_backend import FakeBackend


def per_example(prompts, completions, **kwargs):
    """1, 0, 1, 1 for the first rewrite's four examples, all 0.5 for the second."""
    return [1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]


def test_the_scorer_gives_each_rewards_standard_error_over_its_examples():
    task = load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / "sst2.yaml")))
    scorer = RewriteScorer(task, FakeBackend(), [f"{__name__}.per_example"], [2.0])
    scores = scorer(["a", "b"], task.splits["train"][:4])
    values = [2.0, 0.0, 2.0, 2.0]  # weighted
    mean = sum(values) / 4
    expected = math.sqrt(sum((v - mean) ** 2 for v in values) / 3 / 4)
    assert scores.reward_se == [pytest.approx(expected), 0.0]
    # macro-F1 has no per-example values: no standard error
    assert RewriteScorer(task, FakeBackend(), ["f1"], [1.0])(["a"], task.splits["train"][:4]).reward_se == [None]


def test_signal_to_noise_is_the_within_group_spread_over_the_standard_error():
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.5, float("nan"), 2.0])  # two groups of three
    out = reward_signal(rewards, 3, reward_se=0.25)
    within = (torch.tensor([0.0, 1.0, 0.5]).std().item() + torch.tensor([0.5, 2.0]).std().item()) / 2
    assert out["train/reward_std_within_group"] == pytest.approx(within)
    assert out["train/reward_snr"] == pytest.approx(within / 0.25)
    assert math.isnan(reward_signal(rewards, 3, reward_se=float("nan"))["train/reward_snr"])


def test_the_share_of_groups_with_equal_rewards_is_the_share_that_adds_nothing_to_the_update():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, float("nan"), 0.25, 0.75, 0.25])
    assert reward_signal(rewards, 3, reward_se=0.1)["train/frac_reward_zero_std"] == pytest.approx(2 / 4)
    assert reward_signal(torch.tensor([0.0, 1.0]), 2, reward_se=0.1)["train/frac_reward_zero_std"] == 0.0
