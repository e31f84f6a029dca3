"""prewrite.search: the budget every baseline is held to, and how APE and OPRO propose. The task is
the real SST-2 task and scorer; the task LLM and the rewriter are scripted, so scores and proposals
are known in advance."""

import pytest

from prewrite import baselines
from prewrite.backends.base import TaskBackend
from prewrite.rewards import RewriteScorer
from prewrite.selection import DevSelection, or_initial
from prewrite.tasks import load_task


class LabelSayer(TaskBackend):
    """A task LLM that answers "positive" when the instruction says so, else nothing useful: an
    instruction's accuracy is then the share of positive rows, or 0."""

    def generate(self, prompts):
        return ["positive" if "say positive" in p else "hmm" for p in prompts]

    def cache_identity(self):
        return {"backend": "label sayer"}


class ScriptedRewriter:
    """Returns the next scripted batch of proposals on each call and records what it was shown."""

    def __init__(self, batches):
        self.batches, self.shown = list(batches), []

    def rewrite(self, instruction, meta_prompt, num, temperature, max_new_tokens):
        return self.complete(meta_prompt.format(instruction=instruction), num, temperature, max_new_tokens)

    def complete(self, message, num, temperature, max_new_tokens):
        self.shown.append(message)
        return self.batches.pop(0)[:num] if self.batches else ["same"] * num


@pytest.fixture(scope="module")
def task():
    from omegaconf import OmegaConf

    return load_task(OmegaConf.load("conf/task/sst2.yaml"))


@pytest.fixture
def selection(task):
    def make(budget):
        rows = task.eval_rows("dev", 10, seed=0)
        return DevSelection(RewriteScorer(task, LabelSayer(), ["accuracy"], [1.0]), rows, "accuracy", budget)

    return make


def test_selection_charges_each_new_candidate_once_and_never_exceeds_the_budget(selection, task, caplog):
    sel = selection(budget=35)  # pays for 3 candidates on 10 rows, not 4
    positives = sum(task.gold(r) == 1 for r in sel.dev_rows) / 10
    with caplog.at_level("INFO", logger="prewrite.selection"):
        scored = sel.score(["a", "say positive", "a", "b", "c"])
    assert caplog.messages == ["Scoring 3 candidates on 10 dev rows (30 task-LLM requests)"]  # before the pass
    assert [c["instruction"] for c in scored] == ["a", "say positive", "b"]  # the repeat is free, "c" unaffordable
    assert sel.spent == 30 == sel.scorer.requests and sel.affordable() == 0
    assert sel.score(["d"]) == [] and sel.spent == 30
    assert sel.best["instruction"] == "say positive" and sel.best["dev_score"] == pytest.approx(positives)
    assert sel.curve(offset=100) == [(110, 0.0), (120, positives), (130, positives)]


def test_best_is_the_earliest_of_equal_scores_and_an_empty_selection_says_why(selection):
    sel = selection(budget=None)
    sel.score(["x", "y"])
    assert sel.best["instruction"] == "x"
    with pytest.raises(ValueError, match="budget is smaller than one pass"):
        _ = selection(budget=9).best


def test_ape_spends_the_budget_on_new_rewrites_then_stops(selection, caplog):
    rewriter = ScriptedRewriter([["r1", "r2", "r1"], ["r3", "say positive r4", "r5"], ["r6", "r7", "r8"]])
    with caplog.at_level("INFO", logger="prewrite.baselines"):
        sel = baselines.ape(rewriter, selection(budget=55), "Classify.", "Rewrite: {instruction}", samples_per_round=3)
    best = f"{sel.best['dev_score']:.3f}"
    assert [r.getMessage() for r in caplog.records] == [  # one progress line per round
        "round 0: 2 new candidates, 20 of 55 task-LLM requests spent, best dev accuracy 0.000",
        f"round 1: 3 new candidates, 50 of 55 task-LLM requests spent, best dev accuracy {best}",
    ]
    assert [c["instruction"] for c in sel.scored] == ["r1", "r2", "r3", "say positive r4", "r5"]
    assert [c["round"] for c in sel.scored] == [0, 0, 1, 1, 1]
    assert sel.spent == 50 and sel.best["instruction"] == "say positive r4"
    assert rewriter.shown == ["Rewrite: Classify."] * 2


def test_ape_stops_after_patience_rounds_without_a_new_candidate(selection):
    rewriter = ScriptedRewriter([["r1"]])  # then "same" forever
    sel = baselines.ape(rewriter, selection(budget=None), "Classify.", "{instruction}", samples_per_round=2, patience=3)
    assert [c["instruction"] for c in sel.scored] == ["r1", "same"]
    assert len(rewriter.shown) == 5  # r1, same (new), then three rounds with nothing new


def test_opro_starts_from_the_instruction_and_shows_the_best_so_far_worst_to_best(selection, task):
    rewriter = ScriptedRewriter([["say positive p1", "p2"], ["p3"]])
    sel = baselines.opro(rewriter, selection(budget=40), "Classify.", proposals_per_round=2, top_k=2)
    assert [(c["instruction"], c["round"]) for c in sel.scored] == [
        ("Classify.", 0), ("say positive p1", 1), ("p2", 1), ("p3", 2)
    ]  # fmt: skip
    positives = round(100 * sum(task.gold(r) == 1 for r in sel.dev_rows) / 10)
    first, second = rewriter.shown
    assert "Instruction: Classify.\nScore: 0" in first and "p1" not in first
    # top_k=2 of three scored: the best comes last; one of the two 0-scored ones is left out
    assert second.index("Score: 0") < second.index(f"Instruction: say positive p1\nScore: {positives}")
    assert second.count("Instruction:") == 2


@pytest.mark.parametrize(
    ("initial_dev", "chosen_dev", "expected"),
    [(0.5, 0.6, ("rewrite", False)), (0.5, 0.5, ("initial", True)), (0.6, 0.5, ("initial", True)),
     (0.5, None, ("initial", True)), (None, 0.1, ("rewrite", False))],
)  # fmt: skip
def test_a_rewrite_is_handed_back_only_if_it_beat_the_initial_instruction_on_dev(initial_dev, chosen_dev, expected):
    assert or_initial("initial", initial_dev, "rewrite", chosen_dev) == expected
