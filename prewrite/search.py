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

`python -m prewrite.search method=gepa budget=2000 [task=jsonl task.path=rows.jsonl ...]` runs one
method on its own (conf/search.yaml): it selects on dev, then scores the initial and the chosen
instruction on test, once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from prewrite import faults
from prewrite.rewards import RewriteScorer
from prewrite.rewriter import Rewriter

log = logging.getLogger(__name__)

METHODS = ("ape", "opro", "gepa")
CURVE_METRIC = "curve/dev_{metric}"  # logged at step = task-LLM requests spent

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
        faults.raise_if_requested()  # prewrite.compare's stop signal: between candidates is a safe point
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


def or_initial(initial: str, initial_dev: float | None, chosen: str, chosen_dev: float | None) -> tuple[str, bool]:
    """(the instruction to hand the user, whether it is their own): a chosen rewrite only if it scored
    strictly above the initial instruction on dev, so a user never gets back a worse one unawares."""
    keep = _score({"dev_score": initial_dev}) >= _score({"dev_score": chosen_dev})
    return (initial, True) if keep else (chosen, False)


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
        from prewrite import gepa_search

        reflection = gepa_reflection_lm(cfg, rewriter)
        for key in ("reflection_lm", "reflection_backend", "temperature"):
            settings.pop(key)
        gepa_search.gepa_search(reflection, selection, task.splits["train"], task.instruction, seed, **settings)
        return selection, reflection.usage.snapshot()
    after = rewriter.usage.snapshot()
    return selection, {k: after[k] - before[k] for k in after}


def gepa_reflection_lm(cfg: DictConfig, rewriter: Rewriter):
    """GEPA's reflection model as `gepa.reflection_lm` says: the untrained rewriter, or a backend."""
    from prewrite import gepa_search
    from prewrite.backends import build_backend

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
    client.log_table(run_id, {k: [r.get(k) for r in rows] for k in rows[0]}, "candidates.json")
    client.log_text(run_id, result["instruction"], "instruction.txt")


def search(cfg: DictConfig) -> dict:
    """`cfg.method` from the untrained rewriter at `cfg.budget` task-LLM requests, selected on dev;
    the initial and the chosen instruction scored on test afterwards."""
    import lightning as L
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    from prewrite import precision
    from prewrite import rewriter as rewriter_lib
    from prewrite.backends import build_backend
    from prewrite.loggers import mlflow_experiment
    from prewrite.tasks import load_task
    from prewrite.train import log_config_to_mlflow

    if cfg.method not in METHODS:
        raise ValueError(f"method: unknown search method {cfg.method!r}; choose from {list(METHODS)}")
    if not isinstance(cfg.budget, int) or cfg.budget <= 0:
        raise ValueError(f"budget must be a positive number of task-LLM requests, got {cfg.budget!r}")
    precision.resolve_config(cfg)
    L.seed_everything(cfg.seed)
    task = load_task(cfg.task)
    metric = task.metric
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [metric], [1.0])
    dev_rows = task.eval_rows("dev", cfg.dev_examples, cfg.seed)
    rewriter = rewriter_lib.load_untrained(cfg.rewriter.model_name_or_path, cfg.dtype)
    selection = DevSelection(scorer, dev_rows, metric, cfg.budget)
    selection, usage = run(cfg.method, cfg, rewriter, selection, task, cfg.seed)
    best = selection.best
    # Every choice is made; only now the test rows are scored.
    test_rows = task.eval_rows("test", cfg.test_examples, cfg.seed)
    test_initial, test_best = scorer([task.instruction, best["instruction"]], test_rows).metrics[metric]
    result = {
        "method": cfg.method,
        "instruction": best["instruction"],
        "initial": task.instruction,
        "dev": best["dev_score"],
        "test": test_best,
        "test_initial": test_initial,
        "task_llm_requests": selection.spent,
        "budget": cfg.budget,
        "dev_rows": len(dev_rows),
        "test_rows": len(test_rows),
        "rewriter_usage": usage,
        "curve": selection.curve(),
        "candidates": selection.scored,
    }
    out = Path(cfg.paths.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(result, indent=2))
    if cfg.logger.get("_target_"):
        client = MlflowClient(cfg.logger.tracking_uri)
        name = f"{cfg.method}-{task.name}"
        run_id = client.create_run(
            mlflow_experiment(client, cfg.logger), tags={MLFLOW_RUN_NAME: name, "prewrite.method": cfg.method}
        ).info.run_id
        log_config_to_mlflow(client, run_id, cfg)
        log_search_run(client, run_id, cfg.method, metric, result)
        client.log_metric(run_id, f"test/initial/{metric}", test_initial)
        client.set_terminated(run_id, "FINISHED")
        result["run_id"] = run_id
        print(f"MLflow run {run_id}")
    print(
        f"{cfg.method} on {task.name}: {selection.spent} of {cfg.budget} task-LLM requests, "
        f"{len(selection.scored)} candidates scored on {len(dev_rows)} dev rows\n"
        f"  initial  test {metric} {test_initial:.3f}: {task.instruction!r}\n"
        f"  chosen   test {metric} {test_best:.3f} (dev {best['dev_score']:.3f}): {best['instruction']!r}\n"
        f"Written to {os.path.relpath(out / 'search.json')}"
    )
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="search")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    search(cfg)


if __name__ == "__main__":
    main()
