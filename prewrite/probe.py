"""How much does the wording matter? `python -m prewrite.probe task=sst2_sentences [instructions=[...]]`.

A check to run before training: it scores a list of instructions on the task's dev rows (the fixed
seeded subset training evaluates on, `dev_examples`) with the task LLM and the task's metric, and
reports them sorted by dev score with their spread (best - worst) and how many beat the initial
instruction. Candidates: the task's initial instruction, the user's (`instructions`,
`instructions_file`), and `num_samples` rewrites sampled from the untrained rewriter with training's
meta prompt. A narrow spread, or no candidate above the initial instruction, says RL has little room
here with this task model and scoring. The test split is never read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, ListConfig

from prewrite import precision, rewriter_model, runs
from prewrite.backends import build_backend
from prewrite.cli import tool_main
from prewrite.report import columns, score_text
from prewrite.rewards import RewriteScorer
from prewrite.selection import DevSelection, rank_score
from prewrite.tasks import Task, load_task
from prewrite.tasks.io import read_text

INITIAL, USER, REWRITER = "initial", "user", "rewriter"  # where a candidate came from


class ProbeOptionError(ValueError):
    """A bad option, found before any model loads; the command prints it as one line."""


def candidates_from_options(cfg: DictConfig) -> list[str]:
    """The user's instructions (`instructions`, then `instructions_file`), checked; raises
    ProbeOptionError naming the option."""
    given = cfg.instructions
    if not isinstance(given, Sequence | ListConfig) or isinstance(given, str):
        raise ProbeOptionError(
            f"instructions must be a list, e.g. instructions='[\"Say positive or negative.\"]', got {given!r}"
        )
    for i, text in enumerate(given):
        if not isinstance(text, str) or not text.strip():
            raise ProbeOptionError(f"instructions[{i}] must be a non-empty string, got {text!r}")
    out = [str(t).strip() for t in given]
    if cfg.instructions_file is not None:
        path = Path(str(cfg.instructions_file)).expanduser()
        if not path.is_file():
            raise ProbeOptionError(f"instructions_file={cfg.instructions_file}: no such file")
        try:
            lines = [line.strip() for line in read_text(path).splitlines()]
        except ValueError as e:  # not UTF-8: the message names the line
            raise ProbeOptionError(f"instructions_file={e}") from None
        if not any(lines):
            raise ProbeOptionError(f"instructions_file={path}: no instruction in it (one per line)")
        out += [line for line in lines if line]
    return out


def check_options(cfg: DictConfig) -> None:
    def count(key: str, minimum: int, allow_null: bool = False) -> None:
        value = cfg[key]
        if value is None and allow_null:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            what = "a non-negative integer" if minimum == 0 else "a positive integer"
            raise ProbeOptionError(f"{key} must be {what}{' or null' if allow_null else ''}, got {value!r}")

    count("num_samples", 0)
    count("dev_examples", 1, allow_null=True)
    count("max_new_tokens", 1)
    t = cfg.sample_temperature
    if cfg.num_samples and (not isinstance(t, int | float) or isinstance(t, bool) or t <= 0):
        raise ProbeOptionError(f"sample_temperature must be a number > 0 to sample rewrites, got {t!r}")
    if "{instruction}" not in cfg.meta_prompt:
        raise ProbeOptionError("meta_prompt must hold {instruction}, where the instruction to rewrite goes")


def probe(cfg: DictConfig) -> dict:
    """Scores the candidates on dev; returns {"rows": [...] best first, "summary": {...}}."""
    user = candidates_from_options(cfg)
    check_options(cfg)
    try:
        task = load_task(cfg.task)
    except (ValueError, FileNotFoundError) as e:
        raise ProbeOptionError(f"task={cfg.task.get('name')}: {e}") from None
    precision.resolve_config(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    sources: dict[str, list[str]] = {}  # instruction -> where it came from (a sample may repeat another)
    for text, source in [(task.instruction, INITIAL)] + [(t, USER) for t in user]:
        sources.setdefault(text, []).append(source)
    if cfg.num_samples:
        rw = rewriter_model.load_untrained(
            cfg.rewriter.model_name_or_path, cfg.dtype, cfg.rewriter.chat_template, rewriter_model.decoding(cfg)
        )
        samples = rw.rewrite(
            task.instruction, cfg.meta_prompt, cfg.num_samples, cfg.sample_temperature, cfg.max_new_tokens
        )
        for text in samples:
            sources.setdefault(text, []).append(REWRITER)
    dev_rows = task.eval_rows("dev", cfg.dev_examples, cfg.seed)
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [task.metric], [1.0])
    selection = DevSelection(scorer, dev_rows, task.metric)
    selection.score(list(sources))  # one task-LLM pass over every distinct candidate
    result = summarize(task, selection.scored, sources, len(dev_rows))
    result["summary"]["task_llm_requests"] = selection.spent
    _report(cfg, task, result)
    return result


def summarize(task: Task, scored: list[dict], sources: dict[str, list[str]], n_dev: int) -> dict:
    """The candidates best first, each with its score against the initial instruction's; the spread."""
    metric = task.metric
    initial = next(c["dev_score"] for c in scored if c["instruction"] == task.instruction)
    ranked = sorted(scored, key=rank_score, reverse=True)  # stable: ties keep the initial, then the user's, first
    rows = [
        {
            "rank": i + 1,
            f"dev_{metric}": c["dev_score"],
            "vs_initial": None if c["dev_score"] is None or initial is None else c["dev_score"] - initial,
            "source": "+".join(dict.fromkeys(sources[c["instruction"]])),
            "instruction": c["instruction"],
        }
        for i, c in enumerate(ranked)
    ]
    values = [c["dev_score"] for c in scored if c["dev_score"] is not None]
    others = [c for c in scored if c["instruction"] != task.instruction]
    summary = {
        "task": task.name,
        "metric": metric,
        "dev_rows": n_dev,
        "candidates": len(scored),
        "initial": initial,
        "best": max(values) if values else None,
        "worst": min(values) if values else None,
        "spread": max(values) - min(values) if values else None,
        "beat_initial": sum(rank_score(c) > rank_score({"dev_score": initial}) for c in others),
        "others": len(others),
    }
    return {"rows": rows, "summary": summary}


def _report(cfg: DictConfig, task: Task, result: dict) -> None:
    s, metric = result["summary"], task.metric
    print(
        f"\n{task.name}: dev {metric} on {s['dev_rows']} dev rows (seed {cfg.seed}), {s['candidates']} candidates\n"
        f"{'rank':>4} {'dev':>7} {'vs init':>8}  {'source':<16} instruction"
    )
    for r in result["rows"]:
        delta = "n/a" if r["vs_initial"] is None else f"{r['vs_initial']:+.4f}"
        print(f"{r['rank']:>4} {score_text(r[f'dev_{metric}']):>7} {delta:>8}  {r['source']:<16} {r['instruction']!r}")
    best, worst, initial = (score_text(s[k]) for k in ("best", "worst", "initial"))
    print(
        f"spread (best - worst) {score_text(s['spread'])}: best {best}, worst {worst}; "
        f"{s['beat_initial']} of {s['others']} other candidates beat the initial instruction ({initial})"
    )
    out = Path(cfg.paths.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    print(f"Written to {os.path.relpath(out / 'probe.json')}")
    if cfg.logger.get("_target_"):
        result["summary"]["run_id"] = _log_to_mlflow(cfg, task, result)


def _log_to_mlflow(cfg: DictConfig, task: Task, result: dict) -> str:
    """An MLflow run `probe-<task>`: the config as params, the table as `probe.json`, the summary as metrics."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    client, run_id = runs.create_run(cfg, {MLFLOW_RUN_NAME: f"probe-{task.name}", "prewrite.method": "probe"})
    s, metric = result["summary"], task.metric
    for key in ("initial", "best", "worst", "spread"):
        if s[key] is not None:
            client.log_metric(run_id, f"probe/dev_{metric}_{key}", s[key])
    for key in ("beat_initial", "candidates", "dev_rows", "task_llm_requests"):
        client.log_metric(run_id, f"probe/{key}", s[key])
    client.log_table(run_id, columns(result["rows"]), "probe.json")
    client.set_terminated(run_id, "FINISHED")
    print(f"MLflow run {run_id}")
    return run_id


@hydra.main(version_base="1.3", config_path="../conf", config_name="probe")
def main(cfg: DictConfig) -> None:
    with tool_main("probe", errors=(ProbeOptionError,)):
        probe(cfg)


if __name__ == "__main__":
    main()
