"""The MLflow Prompt Registry: the instructions runs chose, as versions of one prompt per task.

Training, `prewrite.evaluate` and `prewrite.compare` register what they chose as versions of the prompt
`prewrite-<task>`: each version tagged with its run, method, seed and scores (and what the scores were
measured on), its commit message saying where it came from. The alias `best` points at the best version
on dev, so `mlflow.genai.load_prompt("prompts:/prewrite-<task>@best")` returns the instruction to deploy,
and the UI's prompt page lists the versions and diffs any two. Registration runs once, at the end of a
run, and never fails its caller: an error is one warning line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from prewrite.backends import label_scoring
from prewrite.report import score_text

log = logging.getLogger(__name__)

ALIAS = "best"
# Two dev scores are comparable only if these tags agree: the same metric, dev rows and task model.
SCORED_ON = ("dev_metric", "dev_rows", "task_model")


@dataclass
class Chosen:
    """One instruction to register: what chose it, in which run, and its scores."""

    instruction: str
    method: str  # initial, train_best, prewrite_i, prewrite_s, ape, opro, gepa
    run_id: str
    origin: str  # the commit message's opening: where the instruction came from
    dev_score: float | None
    seed: int | None = None
    test_score: float | None = None


def prompt_name(task_name: str) -> str:
    return f"prewrite-{task_name}"


def scored_on(metric: str, dev_rows: list[dict], task_backend: Mapping, task) -> dict[str, str]:
    """The tags that say what a dev score was measured on. The dev rows are named by a hash of their
    content, so runs with other `dev_examples`, seed or data never compare their scores."""
    digest = hashlib.sha256(json.dumps(dev_rows, sort_keys=True, default=str).encode()).hexdigest()[:12]
    model = str(task_backend.get("model_name_or_path") or task_backend.get("model"))
    if label_scoring(task_backend, task):  # label scoring answers differently from generation
        model += " (constrained, calibrated)" if task_backend.get("content_free_inputs") else " (constrained)"
    return {"dev_metric": metric, "dev_rows": f"{len(dev_rows)} rows, sha256 {digest}", "task_model": model}


def register(
    tracking_uri: str, task_name: str, chosen: list[Chosen], scored: dict[str, str], test_rows: int | None = None
) -> list[int]:
    """Registers each distinct instruction of `chosen` (one version; the methods that chose the same
    text share it) and points the alias at the best on dev if it beats the aliased version. Returns
    the new version numbers; on any error warns in one line and returns what was registered."""
    name = prompt_name(task_name)
    versions: list[int] = []
    if not chosen:
        return versions
    try:
        with _store(tracking_uri, chosen[0].run_id):
            best = None
            for text, group in _by_text(chosen).items():
                version = _register_one(name, text, group, scored, test_rows)
                versions.append(version)
                if group[0].dev_score is not None and (best is None or group[0].dev_score > best[1]):
                    best = (version, group[0].dev_score)  # the first of equal scores: the earlier wins ties
            if best:
                _move_alias(name, *best, scored)
    except Exception as e:  # the run's results stand without the registry
        message = " ".join(str(e).split())[:500]  # one line, however MLflow formats its errors
        log.warning("Prompt registry: %s not fully registered (%s: %s)", name, type(e).__name__, message)
    return versions


@contextmanager
def _store(tracking_uri: str, run_id: str) -> Iterator[None]:
    """MLflow's prompt API, pointed at the run's store and experiment (the process's own settings come
    back after): register_prompt then lists the prompt on that experiment's Prompts page."""
    experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    saved = {k: os.environ.get(k) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)  # it would win over the id
    try:
        # the process-wide URI, not the variable: it wins over the variable once anything has set it
        # (Lightning's MLFlowLogger does, for whichever run came first in this process)
        with _use_tracking_uri(tracking_uri):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _by_text(chosen: list[Chosen]) -> dict[str, list[Chosen]]:
    groups: dict[str, list[Chosen]] = {}
    for c in chosen:
        groups.setdefault(c.instruction, []).append(c)
    return groups


def _register_one(name: str, text: str, group: list[Chosen], scored: dict[str, str], test_rows: int | None) -> int:
    first = group[0]
    metric = scored["dev_metric"]
    message = (
        f"{'; '.join(c.origin for c in group)}. dev {metric} {score_text(first.dev_score)} on {scored['dev_rows']}"
    )
    if first.test_score is not None:
        message += f"; test {metric} {score_text(first.test_score)} on {test_rows} rows"
    try:
        version = mlflow.genai.register_prompt(name, text, commit_message=message)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # another run (a parallel sweep job) created the prompt between our look-up and our create
        version = mlflow.genai.register_prompt(name, text, commit_message=message)
    # In this order on the UI's prompt page, which shows the first three
    tags = {"method": ",".join(c.method for c in group)}
    if first.dev_score is not None:
        tags["dev_score"] = str(first.dev_score)
    if first.test_score is not None:
        tags["test_score"] = str(first.test_score)
    tags["run_id"] = ",".join(dict.fromkeys(c.run_id for c in group))
    if first.seed is not None:
        tags["seed"] = str(first.seed)
    if first.dev_score is not None:
        tags |= scored
    if first.test_score is not None:
        tags["test_rows"] = str(test_rows)
    # Version tags, set one by one: register_prompt's `tags` would also overwrite the prompt's own tags
    # with this version's run, method and scores.
    for key, value in tags.items():
        mlflow.genai.set_prompt_version_tag(name, version.version, key, value)
    client = MlflowClient()
    for run_id in dict.fromkeys(c.run_id for c in group):
        client.link_prompt_version_to_run(run_id, version)  # the run's page lists its prompts
    return version.version


def _move_alias(name: str, version: int, dev_score: float, scored: dict[str, str]) -> None:
    """`best` moves to `version` only if nothing holds it yet or `version` scored strictly higher on the
    same dev rows, metric and task model. (Two runs ending at the same instant may both read the old
    holder; the later write wins.)"""
    uri = f"prompts:/{name}@{ALIAS}"
    held = mlflow.genai.load_prompt(uri, allow_missing=True, link_to_model=False, cache_ttl_seconds=0)
    if held is not None:
        if any(held.tags.get(k) != scored[k] for k in SCORED_ON) or "dev_score" not in held.tags:
            log.info("Prompt %s: @%s stays at version %s (scored on other dev rows)", name, ALIAS, held.version)
            return
        if dev_score <= float(held.tags["dev_score"]):
            return
    mlflow.genai.set_prompt_alias(name, ALIAS, version)
