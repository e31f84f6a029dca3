"""Instruction search without RL, at a fixed task-LLM budget: the baselines PRewrite is compared with.

Every method here, like PRewrite-S, picks its instruction by scoring candidates on the same dev rows
(`DevSelection`); only the way candidates are proposed differs:

- `ape`: best-of-K (APE-style, Zhou et al. 2023, without its resampling round): rewrites of the
  initial instruction sampled from the *untrained* rewriter with PRewrite's meta prompt, as many as
  the budget pays for.
- `opro`: propose and select (OPRO-style, Yang et al. 2024): each round shows the untrained rewriter
  the best instructions so far with their dev scores (worst to best, as OPRO orders them) and samples
  new proposals; their scores join the list for the next round. No task exemplars in the prompt:
  the 135M model loses the thread on long prompts.

The budget is counted in task-LLM requests (one candidate on one dev row = one), as
`RewriteScorer.requests` counts RL's training rewards and dev evaluations. An instruction already
scored is not scored again and costs nothing; a candidate the remaining budget cannot pay for on
every dev row is not scored at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prewrite.rewards import RewriteScorer
from prewrite.rewriter import Rewriter

OPRO_PROMPT = """Your task is to write an instruction for a language model. Below are earlier instructions with their scores (0 to 100, higher is better), from worst to best.

{history}

Write a new instruction that is different from all of the above and scores higher than all of them. Output the new instruction only."""  # noqa: E501


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
        seen = {c["instruction"] for c in self.scored}
        new = [c for c in dict.fromkeys(candidates) if c not in seen][: self.affordable()]
        if not new:
            return []
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
        return max(self.scored, key=_score)

    def curve(self, offset: int = 0) -> list[tuple[int, float]]:
        """(requests spent, dev score of the best candidate so far) after each candidate."""
        return best_so_far([(offset + c["requests"], _score(c)) for c in self.scored])


def best_so_far(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(x, the highest y up to x) for each (x, y) in order: a budget curve."""
    out, best = [], float("-inf")
    for x, y in points:
        best = max(best, y)
        out.append((x, best))
    return out


def _score(candidate: dict) -> float:
    """The dev score to rank by: one that could not be computed ranks below every real one."""
    return -1.0 if candidate["dev_score"] is None else candidate["dev_score"]


def ape(
    rewriter: Rewriter,
    selection: DevSelection,
    instruction: str,
    meta_prompt: str,
    samples_per_round: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    patience: int = 3,
) -> DevSelection:
    """Samples rewrites of `instruction` until the budget is spent (or `patience` rounds in a row bring
    nothing new) and scores each new one on dev."""
    return _rounds(
        selection, lambda: rewriter.rewrite(instruction, meta_prompt, samples_per_round, temperature, max_new_tokens),
        first_round=0, patience=patience,
    )  # fmt: skip


def opro(
    rewriter: Rewriter,
    selection: DevSelection,
    instruction: str,
    proposals_per_round: int = 8,
    top_k: int = 20,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    patience: int = 3,
) -> DevSelection:
    """Starts from `instruction`'s dev score; each round proposes from the `top_k` best so far."""
    selection.score([instruction], round=0)

    def propose():
        return rewriter.complete(opro_prompt(selection.scored, top_k), proposals_per_round, temperature, max_new_tokens)

    return _rounds(selection, propose, first_round=1, patience=patience)


def _rounds(selection: DevSelection, propose, first_round: int, patience: int) -> DevSelection:
    """Scores `propose()`'s candidates round after round until the budget is spent or `patience`
    rounds in a row bring nothing new."""
    round, idle = first_round, 0
    while selection.affordable() and idle < patience:
        idle = 0 if selection.score(propose(), round) else idle + 1
        round += 1
    return selection


def opro_prompt(scored: list[dict], top_k: int) -> str:
    ranked = sorted(scored, key=_score)[-top_k:]
    history = "\n\n".join(
        f"Instruction: {c['instruction']}\nScore: {0 if c['dev_score'] is None else round(100 * c['dev_score'])}"
        for c in ranked
    )
    return OPRO_PROMPT.format(history=history)
