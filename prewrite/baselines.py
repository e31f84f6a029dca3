"""Instruction search without RL, at a fixed task-LLM budget: the baselines PRewrite is compared with.

Every method here, like PRewrite-S, picks its instruction by scoring candidates on the same dev rows
(`DevSelection`); only the way candidates are proposed differs:

- `ape`: best-of-K (APE-style, Zhou et al. 2023, without its resampling round): rewrites of the
  initial instruction sampled from the *untrained* rewriter with PRewrite's meta prompt, as many as
  the budget pays for.
- `gepa`: reflective prompt evolution through the `gepa` package (prewrite/gepa_search.py).
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

import logging

from omegaconf import DictConfig, OmegaConf

from prewrite import gepa_search
from prewrite.backends import build_backend
from prewrite.report import columns
from prewrite.rewriter_model import Rewriter
from prewrite.selection import DevSelection, rank_score

log = logging.getLogger(__name__)

METHODS = ("ape", "opro", "gepa")
CURVE_METRIC = "curve/dev_{metric}"  # logged at step = task-LLM requests spent

OPRO_PROMPT = """Your task is to write an instruction for a language model. Below are earlier instructions with their scores (0 to 100, higher is better), from worst to best.

{history}

Write a new instruction that is different from all of the above and scores higher than all of them. Output the new instruction only."""  # noqa: E501


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
        new = selection.score(propose(), round)
        idle = 0 if new else idle + 1
        # A search runs for minutes between MLflow writes: this line is its progress.
        best = f"{rank_score(selection.best):.3f}" if selection.scored else "-"
        log.info(
            "round %d: %d new candidates, %d of %s task-LLM requests spent, best dev %s %s",
            round, len(new), selection.spent, selection.budget, selection.metric, best,
        )  # fmt: skip
        round += 1
    return selection


def opro_prompt(scored: list[dict], top_k: int) -> str:
    ranked = sorted(scored, key=rank_score)[-top_k:]
    history = "\n\n".join(
        f"Instruction: {c['instruction']}\nScore: {0 if c['dev_score'] is None else round(100 * c['dev_score'])}"
        for c in ranked
    )
    return OPRO_PROMPT.format(history=history)


def run(method: str, cfg: DictConfig, rewriter: Rewriter, selection: DevSelection, task, seed: int):
    """One search method from the untrained `rewriter`, with its settings in `cfg[method]`; returns the
    selection and the rewriter role's usage (calls and tokens of whatever proposed the candidates)."""
    if method not in METHODS:
        raise ValueError(f"methods: unknown search method {method!r}; choose from {list(METHODS)}")
    settings = OmegaConf.to_container(cfg[method], resolve=True)
    before = rewriter.usage.snapshot()
    if method == "ape":
        ape(rewriter, selection, task.instruction, cfg.meta_prompt, **settings, max_new_tokens=cfg.max_new_tokens)
    elif method == "opro":
        opro(rewriter, selection, task.instruction, **settings, max_new_tokens=cfg.max_new_tokens)
    else:
        reflection = gepa_reflection_lm(cfg, rewriter)
        for key in ("reflection_lm", "reflection_backend", "temperature"):
            settings.pop(key)
        gepa_search.gepa_search(reflection, selection, task.splits["train"], task.instruction, seed, **settings)
        return selection, reflection.usage.snapshot()
    after = rewriter.usage.snapshot()
    return selection, {k: after[k] - before[k] for k in after}


def gepa_reflection_lm(cfg: DictConfig, rewriter: Rewriter):
    """GEPA's reflection model as `gepa.reflection_lm` says: the untrained rewriter, or a backend."""
    choice = cfg.gepa.reflection_lm
    if choice == "rewriter":
        return gepa_search.rewriter_reflection(rewriter, cfg.gepa.temperature, cfg.max_new_tokens)
    if choice == "backend":
        if not cfg.gepa.reflection_backend:
            raise ValueError("gepa.reflection_lm=backend needs gepa.reflection_backend (a task_backend block)")
        return gepa_search.backend_reflection(build_backend(cfg.gepa.reflection_backend, cfg.cache))
    raise ValueError(f"gepa.reflection_lm must be 'rewriter' or 'backend', got {choice!r}")


def log_search_run(client, run_id: str, method: str, metric: str, result: dict) -> None:
    """A search method's MLflow run: its budget curve, dev and test scores, requests, the rewriter
    role's usage, every candidate scored on dev (a table) and the chosen instruction."""
    for requests, value in result["curve"]:
        client.log_metric(run_id, CURVE_METRIC.format(metric=metric), value, step=requests)
    client.log_metric(run_id, f"dev/{metric}", result["dev"])
    client.log_metric(run_id, f"test/{metric}", result["test"])
    client.log_metric(run_id, "task_llm_requests", result["task_llm_requests"])
    for key, value in result["rewriter_usage"].items():
        client.log_metric(run_id, f"usage/rewriter/{key}", value)
    rows = result["candidates"]
    client.log_table(run_id, columns(rows), "candidates.json")
    client.log_text(run_id, result["instruction"], "instruction.txt")
