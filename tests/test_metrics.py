"""Each metric on real rows of the shipped data (no model: the answers are written here)."""

import math

import pytest
from omegaconf import OmegaConf

from prewrite.rewards import metrics
from prewrite.rewards.metrics import math_equal, normalize_answer, token_f1
from prewrite.tasks import load_task
from tests.conftest import CONF


def task(name):
    return load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / f"{name}.yaml")))


def call(func, t, completions, rows):
    return func(prompts=[""] * len(rows), completions=completions, task=t, gold=[t.gold(r) for r in rows])


def test_squad_normalisation_and_token_f1():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert token_f1("the Eiffel tower", "Eiffel Tower") == 1.0
    assert token_f1("Eiffel", "Eiffel Tower") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("Paris", "Eiffel Tower") == 0.0


def test_gsm8k_answers_after_hashes_are_verified():
    t = task("gsm8k")
    row = t.splits["test"][0]  # Janet's ducks: #### 18
    gold = t.gold(row)
    assert gold == "18"
    got = call(
        metrics.math_verify, t, ["She makes $18 every day.", "The answer is \\boxed{18}.", "It is 16."], [row] * 3
    )
    assert got == [1.0, 1.0, 0.0]
    assert call(metrics.accuracy, t, ["so 18"], [row]) == [1.0]  # accuracy means math-verify for math


def test_math500_latex_answers_equal_in_another_form():
    t = task("math500")
    rows = [r for split in t.splits.values() for r in split]
    polar = next(r for r in rows if r["answer"].replace(" ", "") == "\\left(3,\\frac{\\pi}{2}\\right)")
    assert call(metrics.math_verify, t, ["Therefore \\boxed{(3, \\pi/2)}"], [polar]) == [1.0]
    assert call(metrics.math_verify, t, ["Therefore \\boxed{(3, \\pi)}"], [polar]) == [0.0]
    frac = next(r for r in rows if r["answer"] == "\\frac{14}{3}")
    assert call(metrics.math_verify, t, ["x = \\boxed{14/3}"], [frac]) == [1.0]


def test_unparseable_math_answer_is_wrong_and_broken_gold_is_none():
    assert math_equal(None, "18") == 0.0
    assert math_equal("no number here", "18") == 0.0
    assert math_equal("18", "") is None  # no gold to compare with: not computable, not 0


def test_a_math_verify_failure_is_none_not_a_crash(monkeypatch):
    import math_verify

    def boom(*args, **kwargs):
        raise RecursionError("sympy blew up")

    monkeypatch.setattr(math_verify, "verify", boom)
    assert math_equal("18", "18") is None


def test_nq_open_uses_every_alias():
    t = task("nq_open")
    row = next(r for r in t.splits["test"] if len(r["answer"]) > 1)
    aliases = t.gold(row)
    assert call(metrics.exact_match, t, [aliases[-1] + "."], [row]) == [1.0]
    assert call(metrics.exact_match, t, ["something else"], [row]) == [0.0]
    f1 = call(metrics.f1, t, [f"maybe {aliases[-1]}"], [row])[0]
    assert 0.0 < f1 < 1.0
    assert call(metrics.f1, t, [aliases[0]], [row]) == [1.0]


@pytest.mark.parametrize("name", ["sst2", "ag_news", "boolq", "cb", "copa"])
def test_classification_label_sets(name):
    t = task(name)
    rows = t.splits["test"][:40]
    words = [t.labels[t.gold(r)] for r in rows]
    assert call(metrics.accuracy, t, words, rows) == [1.0] * len(rows)
    # every answer names the first label: right exactly where that label is the gold
    first = next(iter(t.labels))
    got = call(metrics.accuracy, t, [t.labels[first]] * len(rows), rows)
    assert got == [float(t.gold(r) == first) for r in rows]
    assert call(metrics.exact_match, t, ["I cannot say"], rows[:1]) == [0.0]


def test_macro_f1_over_the_sample():
    t = task("sst2")
    rows = [r for r in t.splits["test"] if r["label"] == 1][:2] + [r for r in t.splits["test"] if r["label"] == 0][:2]
    # predictions: pos, pos, pos, neg -> positive: tp 2 fp 1 fn 0 -> 0.8; negative: tp 1 fp 0 fn 1 -> 2/3
    got = call(metrics.macro_f1, t, ["positive", "positive", "positive", "negative"], rows)
    assert got == [pytest.approx((0.8 + 2 / 3) / 2)]
    # reward=f1 on a classification task resolves to macro-F1
    from prewrite.rewards import resolve_reward_func

    assert resolve_reward_func("f1", t) == ("f1", metrics.macro_f1)
    assert resolve_reward_func("f1", task("nq_open")) == ("f1", metrics.f1)


def test_perplexity_turns_mean_logprob_into_inverse_perplexity():
    t = task("sst2")
    got = metrics.perplexity(prompts=[], completions=[], task=t, gold=[], loglikelihoods=[0.0, -1.0, None])
    assert got == [1.0, pytest.approx(0.36787944), None]


def test_template_penalises_a_rewrite_that_drops_a_required_placeholder():
    from tests.test_tasks import sst2_cfg

    t = load_task(sst2_cfg(instruction="Positive or negative? {sentence}", template="{instruction}\nAnswer:"))
    assert t.required_placeholders == ["{sentence}"]
    row = t.splits["test"][0]
    assert t.prompt("Review: {sentence} -- positive or negative?", row) == (
        f"Review: {row['sentence']} -- positive or negative?\nAnswer:"
    )
    assert t.prompt("odd {braces} stay {0}", row) == "odd {braces} stay {0}\nAnswer:"
    got = metrics.template(prompts=[], completions=[], task=t, rewrite=["Judge {sentence}", "Judge it"])
    assert got == [0.0, -1.0]
    # an instruction without placeholders requires none
    assert metrics.template(prompts=[], completions=[], task=task("sst2"), rewrite=["anything"]) == [0.0]


def test_label_prob_and_margin_from_the_label_loglikelihoods():
    task = load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / "sst2.yaml")))  # labels 0, 1
    lls = [[math.log(0.2), math.log(0.6)], [-1.0, -9.0], [None, -1.0]]
    gold = [1, 1, 0]
    probs = metrics.label_prob(None, None, task, gold, lls)
    assert probs[0] == pytest.approx(0.75)  # 0.6 / (0.2 + 0.6): normalised over the labels
    assert probs[1] == pytest.approx(math.exp(-9) / (math.exp(-1) + math.exp(-9)))
    assert probs[2] is None  # a label with no likelihood: not computable, left out of the mean
    margins = metrics.label_margin(None, None, task, gold, lls)
    assert margins[:2] == [pytest.approx(math.log(3)), -metrics.MARGIN_CLIP]  # -8 clipped to -5
    assert margins[2] is None


def test_label_rewards_refuse_a_task_that_is_not_classification():
    from prewrite.rewards import RewriteScorer
    from tests.fake_backend import FakeBackend

    gsm8k = load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / "gsm8k.yaml")))
    with pytest.raises(ValueError, match="'label_prob' is for classification tasks; task 'gsm8k' is math"):
        RewriteScorer(gsm8k, FakeBackend(), ["label_prob"], [1.0])
