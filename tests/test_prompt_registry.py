"""prewrite.prompt_registry on a real local MLflow store (SQLite): versions, their tags and commit
messages, the `best` alias moving only on a higher dev score measured on the same rows, and a failed
registration that only warns."""

import json
import logging
import os
import shutil
import time
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service import utils as mlflow_utils
from omegaconf import OmegaConf

from prewrite import prompt_registry
from prewrite.prompt_registry import Chosen
from prewrite.training import run_description

ROWS = [{"input": "a fine film", "output": "positive"}, {"input": "dull", "output": "negative"}]
BACKEND = {"model_name_or_path": "embedded:smollm2-135m-instruct", "constrained": False}
SST2 = SimpleNamespace(name="sst2", kind="classification")
SCORED = prompt_registry.scored_on("accuracy", ROWS, BACKEND, SST2)
NAME = "prewrite-sst2"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A store's tables made once (MLflow's migrations take seconds); each test gets a copy."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store, tmp_path, monkeypatch):
    """A fresh store, one experiment; `run()` makes a run in it. The process's MLflow settings stay unset."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    # an in-process training earlier in the suite leaves MLflow's process-wide URI set; restoring it
    # would set the variable again (MLflow keeps the two in step)
    monkeypatch.setattr(mlflow_utils, "_tracking_uri", None)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("prewrite-sst2", str(tmp_path / "artifacts"))
    return uri, client, exp, lambda: client.create_run(exp).info.run_id


def training(run_id, initial=0.5, best=0.75, rewrite="Say positive or negative.", seed=0):
    return [
        Chosen("Classify the sentiment.", "initial", run_id, f"initial instruction, run {run_id}", initial, seed),
        Chosen(rewrite, "train_best", run_id, f"best rewrite of run {run_id}, step 2", best, seed),
    ]


def alias_version(client) -> int:
    return int(client.get_prompt_version_by_alias(NAME, "best").version)


def test_versions_carry_run_method_seed_scores_and_origin(store, monkeypatch):
    uri, client, exp, run = store
    run_id = run()
    assert prompt_registry.register(uri, "sst2", training(run_id), SCORED) == [1, 2]
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ  # put back

    v1, v2 = client.get_prompt_version(NAME, 1), client.get_prompt_version(NAME, 2)
    assert (v1.template, v2.template) == ("Classify the sentiment.", "Say positive or negative.")
    assert {k: v for k, v in v2.tags.items() if not k.startswith("mlflow.")} == {
        "run_id": run_id, "method": "train_best", "seed": "0", "dev_score": "0.75", "dev_metric": "accuracy",
        "dev_rows": SCORED["dev_rows"], "task_model": "embedded:smollm2-135m-instruct",
    }  # fmt: skip
    assert SCORED["dev_rows"].startswith("2 rows, sha256 ")
    assert v2.commit_message == f"best rewrite of run {run_id}, step 2. dev accuracy 0.7500 on {SCORED['dev_rows']}"
    # the prompt's own tags are not overwritten by a version's
    assert "run_id" not in client.get_prompt(NAME).tags
    assert alias_version(client) == 2
    linked = json.loads(client.get_run(run_id).data.tags["mlflow.linkedPrompts"])
    assert linked == [{"name": NAME, "version": "1"}, {"name": NAME, "version": "2"}]
    # listed on the experiment's Prompts page (MLflow links the experiment in a thread of its own)
    for _ in range(50):
        if f",{exp}," in client.get_prompt(NAME).tags.get("_mlflow_experiment_ids", ""):
            break
        time.sleep(0.1)
    assert [p.name for p in client.search_prompts(f"experiment_id = '{exp}'")] == [NAME]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.genai.load_prompt(f"prompts:/{NAME}@best").template == "Say positive or negative."


def test_test_scores_and_a_text_chosen_twice(store):
    uri, client, _, run = store
    run_id = run()
    chosen = [
        Chosen("Label it.", "prewrite_i", run_id, "PRewrite-I", 0.6, 1, test_score=0.55),
        Chosen("Label it.", "prewrite_s", run_id, "PRewrite-S", 0.6, 1, test_score=0.55),
    ]
    assert prompt_registry.register(uri, "sst2", chosen, SCORED, test_rows=872) == [1]
    version = client.get_prompt_version(NAME, 1)
    assert version.tags["method"] == "prewrite_i,prewrite_s" and version.tags["run_id"] == run_id
    assert (version.tags["test_score"], version.tags["test_rows"]) == ("0.55", "872")
    assert version.commit_message.endswith("; test accuracy 0.5500 on 872 rows")


def test_alias_moves_only_on_a_higher_dev_score_on_the_same_rows(store):
    uri, client, _, run = store
    prompt_registry.register(uri, "sst2", training(run()), SCORED)  # v1 initial 0.5, v2 rewrite 0.75
    assert alias_version(client) == 2
    prompt_registry.register(uri, "sst2", training(run(), best=0.75, rewrite="Tie."), SCORED)  # v3, v4: a tie
    assert alias_version(client) == 2
    prompt_registry.register(uri, "sst2", training(run(), best=0.6, rewrite="Worse."), SCORED)  # v5, v6
    assert alias_version(client) == 2
    other_rows = prompt_registry.scored_on("accuracy", ROWS[:1], BACKEND, SST2)
    prompt_registry.register(uri, "sst2", training(run(), best=1.0, rewrite="Other rows."), other_rows)  # v7, v8
    assert alias_version(client) == 2
    other_model = prompt_registry.scored_on("accuracy", ROWS, BACKEND | {"constrained": "auto"}, SST2)
    assert other_model["task_model"].endswith("(constrained)")  # auto scores a classification task's labels
    prompt_registry.register(uri, "sst2", training(run(), best=1.0, rewrite="Constrained."), other_model)  # v9, v10
    assert alias_version(client) == 2
    prompt_registry.register(uri, "sst2", training(run(), best=0.9, rewrite="Better."), SCORED)  # v11, v12
    assert alias_version(client) == 12
    assert client.get_prompt_version(NAME, 12).template == "Better."


def test_initial_wins_a_tie_with_the_rewrite(store):
    uri, client, _, run = store
    prompt_registry.register(uri, "sst2", training(run(), initial=0.5, best=0.5), SCORED)
    assert alias_version(client) == 1


def test_a_failed_registration_warns_in_one_line_and_returns(store, monkeypatch, caplog):
    uri, client, _, run = store
    run_id = run()

    def broken(*args, **kwargs):
        raise MlflowException("the registry\n  is down")

    monkeypatch.setattr(mlflow.genai, "register_prompt", broken)
    with caplog.at_level(logging.WARNING, "prewrite.prompt_registry"):
        assert prompt_registry.register(uri, "sst2", training(run_id), SCORED) == []
    assert [r.getMessage() for r in caplog.records] == [
        f"Prompt registry: {NAME} not fully registered (MlflowException: the registry is down)"
    ]
    assert "MLFLOW_TRACKING_URI" not in os.environ
    caplog.clear()
    with caplog.at_level(logging.WARNING, "prewrite.prompt_registry"):  # an unknown run: the same
        assert prompt_registry.register(uri, "sst2", training("0" * 32), SCORED) == []
    assert len(caplog.records) == 1


def test_a_prompt_created_meanwhile_by_another_run_is_reused(store, monkeypatch):
    """Parallel sweep jobs both find no prompt; the second one's create fails and is retried."""
    uri, client, _, run = store
    register = mlflow.genai.register_prompt
    calls = []

    def racing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException("already exists", error_code=mlflow.protos.databricks_pb2.RESOURCE_ALREADY_EXISTS)
        return register(*args, **kwargs)

    monkeypatch.setattr(mlflow.genai, "register_prompt", racing)
    assert prompt_registry.register(uri, "sst2", training(run()), SCORED) == [1, 2]


def test_run_description_shows_both_instructions_and_the_choice():
    cfg = OmegaConf.create({"algorithm": {"name": "grpo"}, "seed": 0, "steps": 20, "register_prompts": True})
    best = {
        "initial_score": 0.5,
        "score": 0.75,
        "step": 15,
        "rewrite": "Line one.\nLine two.",
        "selected_is_initial": False,
    }
    note = run_description(cfg, "sst2", "accuracy", 64, "Classify the sentiment.", best)
    assert "Initial instruction: dev accuracy **0.5000**\n\n> Classify the sentiment." in note
    assert "Best rewrite (step 15): dev accuracy **0.7500**\n\n> Line one.\n> Line two." in note
    assert "Selected: the rewrite." in note and "`prompts:/prewrite-sst2@best`" in note
    kept = run_description(cfg, "sst2", "accuracy", 64, "x" * 9000, best | {"selected_is_initial": True})
    assert "Selected: the initial instruction" in kept and len(kept) < 8000


def test_the_runs_store_is_used_whatever_tracking_uri_the_process_has_set(store, tmp_path):
    # Lightning's MLFlowLogger sets the process-wide URI to the first run's store; a later run's
    # registration (compare's next seed, another in-process training) must still go to its own store.
    uri, client, exp, run = store
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    mlflow.set_tracking_uri(elsewhere)
    try:
        assert prompt_registry.register(uri, "sst2", training(run()), SCORED) == [1, 2]
        assert mlflow.get_tracking_uri() == elsewhere  # put back
    finally:
        mlflow.set_tracking_uri(None)
    assert alias_version(client) == 2
    assert not MlflowClient(elsewhere).search_prompts()
