"""Scoring rewrites with the real embedded task model on a few SST-2 rows."""

import pytest
from omegaconf import OmegaConf

from prewrite.backends.hf import HFBackend
from prewrite.rewards import RewriteScorer, resolve_reward_func
from prewrite.tasks import load_task
from tests.conftest import CONF

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def task():
    return load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / "sst2.yaml")))


@pytest.fixture(scope="module")
def backend():
    return HFBackend("embedded:smollm2-135m-instruct", max_new_tokens=8)


def none_on_odd_rows(prompts, completions, task, **columns):
    """A reward that cannot be computed on every other example (stands for an unparseable answer)."""
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def always_none(prompts, completions, task, **columns):
    return [None] * len(completions)


def test_one_pass_scores_every_rewrite_on_the_shared_rows(task, backend):
    rows = task.splits["test"][:4]
    good = "Is the sentiment of this sentence positive or negative? Answer with one word."
    scorer = RewriteScorer(task, backend, ["accuracy"], [1.0])
    before = backend.num_calls
    scores = scorer([good, "Repeat the sentence.", good], rows)
    # identical prompts are run once: 2 distinct rewrites x 4 rows
    assert backend.num_calls - before == 8
    assert len(scores.rewards) == 3 and scores.rewards[0] == scores.rewards[2]
    assert all(0.0 <= r <= 1.0 for r in scores.rewards)
    # the reward is the mean accuracy of the parsed answers against the gold labels
    expected = sum(task.parse(a) == task.gold(r) for a, r in zip(scores.answers[0], rows, strict=True)) / 4
    assert scores.rewards[0] == pytest.approx(expected)
    assert scores.metrics["accuracy"] == scores.rewards


def test_weighted_sum_skips_none_examples_and_weight_zero(task, backend):
    rows = task.splits["test"][:4]
    path = f"{__name__}.none_on_odd_rows"
    scores = RewriteScorer(task, backend, ["accuracy", path, f"{__name__}.always_none"], [0.5, 2.0, 0.0])(
        ["Classify the sentiment."], rows
    )
    # none_on_odd_rows averages over its computable rows only (1.0); always_none has weight 0: never called
    assert scores.metrics["none_on_odd_rows"] == [1.0]
    assert "always_none" not in scores.metrics
    assert scores.rewards[0] == pytest.approx(0.5 * scores.metrics["accuracy"][0] + 2.0)


def test_a_reward_that_cannot_be_computed_is_none_not_zero(task, backend):
    scores = RewriteScorer(task, backend, [f"{__name__}.always_none"], [1.0])(["x"], task.splits["test"][:2])
    assert scores.rewards == [None]


def test_weight_zero_costs_no_task_llm_calls(task, backend):
    rows = task.splits["test"][:4]
    before = backend.num_calls
    RewriteScorer(task, backend, ["accuracy", "perplexity"], [1.0, 0.0])(["Classify the sentiment."], rows)
    assert backend.num_calls - before == 4  # generation only; the log-likelihood pass never ran
    before = backend.num_calls
    scores = RewriteScorer(task, backend, ["perplexity"], [1.0])(["Say positive or negative."], rows)
    assert backend.num_calls - before == 4  # log-likelihood only: nothing generated
    assert scores.answers == [[""] * 4]
    assert 0.0 < scores.rewards[0] <= 1.0


def test_reported_metric_is_computed_but_not_rewarded(task, backend):
    rows = task.splits["test"][:4]
    scores = RewriteScorer(task, backend, ["f1"], [1.0], report=["accuracy"])(["Classify the sentiment."], rows)
    assert set(scores.metrics) == {"f1", "accuracy"}
    assert scores.rewards == scores.metrics["f1"]


def test_loglikelihood_matches_an_unbatched_forward_pass(task):
    import torch

    backend = HFBackend("embedded:smollm2-135m-instruct", dtype="float32")  # fp32: exact comparison
    rows = task.splits["test"][:3]
    prompts = [task.prompt(i, r) for i, r in zip(["Classify.", "Is it good or bad?", "x"], rows, strict=True)]
    conts = ["positive", "negative", "not sure at all"]  # different lengths: padding on both sides
    got = backend.loglikelihood(prompts, conts)
    for p, c, g in zip(prompts, conts, got, strict=True):
        ctx = backend._encode([p])[0]
        tgt = backend.tokenizer(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logps = backend.model(input_ids=torch.tensor([ctx + tgt])).logits[0, :-1].log_softmax(-1)
        want = logps[len(ctx) - 1 :].gather(-1, torch.tensor(tgt).unsqueeze(-1)).mean().item()
        assert g == pytest.approx(want, abs=1e-4)


def scaled_accuracy(prompts, completions, task, gold, factor, **columns):
    return [factor * float(task.parse(c) == g) for c, g in zip(completions, gold, strict=True)]


def test_a_trl_style_reward_plugs_in_through_target(task, backend):
    entry = {"_target_": f"{__name__}.scaled_accuracy", "_partial_": True, "factor": 2.0, "name": "double"}
    rows = task.splits["test"][:4]
    scores = RewriteScorer(task, backend, [entry, "accuracy"], [1.0, 1.0])(["Classify the sentiment."], rows)
    assert scores.metrics["double"] == [2 * scores.metrics["accuracy"][0]]


def test_an_empty_rewrite_is_scored_as_written(task, backend):
    # The stated rule: an empty rewrite is scored as an empty instruction (the input alone).
    rows = task.splits["test"][:2]
    scores = RewriteScorer(task, backend, ["accuracy"], [1.0])(["", "Classify the sentiment."], rows)
    assert scores.rewards[0] is not None and len(scores.answers[0]) == 2


def test_bad_reward_config_is_explained(task, backend):
    with pytest.raises(ValueError, match="Unknown reward function 'nope'"):
        resolve_reward_func("nope", task)
    with pytest.raises(ValueError, match="reward_weights has 1 entries but reward_funcs has 2"):
        RewriteScorer(task, backend, ["accuracy", "accuracy"], [1.0])
    with pytest.raises(ValueError, match="every reward weight is 0"):
        RewriteScorer(task, backend, ["accuracy"], [0.0])
    assert RewriteScorer(task, backend, ["accuracy"], None).weighted[0][2] == 1.0
