"""Choosing an instruction on dev: every method (training's dev evaluations, PRewrite-S, the search
baselines, the probe) scores its candidates on the same fixed dev rows with `DevSelection`, counts the
task-LLM requests it spent, and hands the user a rewrite only when it beat their own instruction there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig

from prewrite import faults
from prewrite.rewards import RewriteScorer
from prewrite.rewriter_model import Rewriter

log = logging.getLogger(__name__)


@dataclass
class DevSelection:
    """Candidates scored on fixed dev rows; the best so far wins (ties: the earlier). `budget`: the most
    task-LLM requests to spend (None = no limit)."""

    scorer: RewriteScorer
    dev_rows: list[dict]
    metric: str
    budget: int | None = None
    spent: int = 0
    scored: list[dict] = field(default_factory=list)  # {"instruction", "dev_score", "requests", "round"}

    def affordable(self) -> int:
        """How many more candidates the budget pays for."""
        if self.budget is None:
            return 1 << 30
        return max(0, self.budget - self.spent) // len(self.dev_rows)

    def score(self, candidates: Sequence[str], round: int = 0) -> list[dict]:
        """Scores the candidates not seen before, as many as the budget allows, in one task-LLM pass."""
        faults.raise_if_requested()  # prewrite.compare's stop signal: between candidates is a safe point
        seen = {c["instruction"] for c in self.scored}
        new = [c for c in dict.fromkeys(candidates) if c not in seen][: self.affordable()]
        if not new:
            return []
        # one pass can take many minutes on a CPU (e.g. 20 candidates x 128 AG News rows: about 20 on 2 cores)
        requests = len(new) * len(self.dev_rows)
        log.info("Scoring %d candidates on %d dev rows (%d task-LLM requests)", len(new), len(self.dev_rows), requests)
        values = self.scorer(new, self.dev_rows).metrics[self.metric]
        rows = []
        for instruction, value in zip(new, values, strict=True):
            self.spent += len(self.dev_rows)
            rows.append({"instruction": instruction, "dev_score": value, "requests": self.spent, "round": round})
        self.scored += rows
        return rows

    @property
    def best(self) -> dict:
        if not self.scored:
            raise ValueError("no candidate was scored: the budget is smaller than one pass over the dev rows")
        return max(self.scored, key=rank_score)

    def curve(self, offset: int = 0) -> list[tuple[int, float]]:
        """(requests spent, dev score of the best candidate so far) after each candidate."""
        return best_so_far([(offset + c["requests"], rank_score(c)) for c in self.scored])


def best_so_far(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(x, the highest y up to x) for each (x, y) in order: a budget curve."""
    out, best = [], float("-inf")
    for x, y in points:
        best = max(best, y)
        out.append((x, best))
    return out


def requests_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The requests at the first point of a budget curve at or above `target` (None: never)."""
    return next((requests for requests, value in curve if value >= target), None)


def or_initial(initial: str, initial_dev: float | None, chosen: str, chosen_dev: float | None) -> tuple[str, bool]:
    """(the instruction to hand the user, whether it is their own): a chosen rewrite only if it scored
    strictly above the initial instruction on dev, so a user never gets back a worse one unawares."""
    keep = rank_score({"dev_score": initial_dev}) >= rank_score({"dev_score": chosen_dev})
    return (initial, True) if keep else (chosen, False)


def rank_score(candidate: dict) -> float:
    """The dev score to rank by: one that could not be computed ranks below every real one."""
    return -1.0 if candidate["dev_score"] is None else candidate["dev_score"]


def prewrite_i_and_s(rw: Rewriter, instruction: str, cfg: DictConfig, selection: DevSelection):
    """(PRewrite-I, PRewrite-S) of a trained rewriter: its greedy rewrite, and the best on dev (scored
    by `selection`) of `cfg.num_samples` rewrites sampled at `cfg.sample_temperature`.
    PRewrite-I is the greedy rewrite training recorded when it selected these weights on dev, if it
    rewrote this instruction with this meta prompt: re-decoding at another precision (training runs
    under bf16 autocast) can give another text."""
    recorded = rw.info.get("rewrite")
    same_input = (rw.info.get("instruction"), rw.info.get("meta_prompt")) == (instruction, cfg.meta_prompt)
    if recorded is None or not same_input:
        recorded = rw.rewrite(instruction, cfg.meta_prompt, 0, max_new_tokens=cfg.max_new_tokens)[0]
    greedy = recorded
    samples = rw.rewrite(instruction, cfg.meta_prompt, cfg.num_samples, cfg.sample_temperature, cfg.max_new_tokens)
    selection.score(samples)
    return greedy, selection.best["instruction"]
