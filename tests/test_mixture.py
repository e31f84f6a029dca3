"""task=mixture: several tasks in one training (loading, the step's member, the backends), and a real
tiny training on two members with per-member dev metrics in MLflow."""

import json
from collections import Counter

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from prewrite.backends import build_backends, usage_over
from prewrite.config_check import ConfigError, check_training
from prewrite.tasks import load_members, load_task
from prewrite.tasks.mixture import member_at
from prewrite.training import train
from tests.conftest import TINY_TRAINING


def mixture(*members, **extra):
    return OmegaConf.create(
        {"name": "mixture", "kind": "mixture", "members": list(members), "sampling": "round_robin", "weights": None}
        | {"metric": "accuracy", "max_new_tokens": 8}
        | extra
    )


def test_members_are_the_named_task_configs_and_a_mixture_is_refused_where_one_task_is_expected():
    trec, subj = load_members(mixture("trec", "subj"))
    assert (trec.name, subj.name) == ("trec", "subj")
    assert trec.splits["test"] == load_task(OmegaConf.load("conf/task/trec.yaml")).splits["test"]
    assert [t.name for t in load_members(OmegaConf.load("conf/task/subj.yaml"))] == ["subj"]  # one task: itself
    with pytest.raises(ValueError, match="trains one rewriter on several tasks"):
        load_task(mixture("trec", "subj"))


@pytest.mark.parametrize(
    "members, extra, message",
    [
        (["trec", "nope"], {}, r"unknown task 'nope'; expected one of \[.*'trec'"),
        (["trec"], {}, "at least two task names"),
        (["trec", "trec"], {}, "names a task twice"),
        (["trec", "nq_open"], {}, r"averaged over the members on dev; nq_open \(f1\) report another"),
        (["trec", "subj"], {"sampling": "weighted"}, "one positive number per member"),
        (["trec", "subj"], {"sampling": "weighted", "weights": [1, 0]}, "one positive number per member"),
        (["trec", "subj"], {"sampling": "random"}, r"task.sampling='random'; expected one of round_robin, weighted"),
    ],
)
def test_a_bad_mixture_is_refused_naming_the_option(members, extra, message):
    with pytest.raises(ValueError, match=message):
        load_members(mixture(*members, **extra))


def test_steps_take_members_in_turn_or_by_seeded_weights():
    cfg = {"sampling": "round_robin"}
    assert [member_at(cfg, 3, seed=0, step=s) for s in range(6)] == [0, 1, 2, 0, 1, 2]
    weighted = {"sampling": "weighted", "weights": [3, 1]}
    draws = [member_at(weighted, 2, seed=0, step=s) for s in range(400)]
    assert draws == [member_at(weighted, 2, seed=0, step=s) for s in range(400)]  # reproducible
    assert draws != [member_at(weighted, 2, seed=1, step=s) for s in range(400)]  # and seeded
    assert 0.68 < Counter(draws)[0] / 400 < 0.82  # about 3 in 4


def test_stages_and_placeholders_are_checked_before_work(compose_train):
    with pytest.raises(ConfigError, match="stages=2 with task=mixture"):
        check_training(compose_train("task=mixture", "stages=2"))
    with pytest.raises(ConfigError, match=r"input_meta_prompt has placeholders \['instruction'\]"):
        check_training(compose_train("rewrite_mode=input", "input_meta_prompt='Rewrite {instruction}'"))
    with pytest.raises(ConfigError, match="rewrite_mode='line'; expected one of task, input"):
        check_training(compose_train("rewrite_mode=line"))


@pytest.mark.integration
def test_one_model_answers_each_member_by_its_own_labels_counting_usage_apart(compose_train):
    cfg = compose_train("task=mixture", "task.members=[trec,sst2_sentences]", "cache.enabled=false")
    tasks = load_members(cfg.task)
    trec, sst2 = build_backends(cfg.task_backend, None, tasks)
    assert trec.model is sst2.model  # loaded once
    assert trec.choices == list(tasks[0].labels.values()) and sst2.choices == ["negative", "positive"]
    answers = sst2.generate([tasks[1].prompt("Classify the sentiment.", r) for r in tasks[1].splits["dev"][:3]])
    assert set(answers) <= {"negative", "positive"}
    assert trec.generate([tasks[0].prompt("Classify the question.", tasks[0].splits["dev"][0])])[0] in trec.choices
    assert (trec.num_calls, sst2.num_calls) == (1, 3)
    assert usage_over([trec, sst2, sst2])["calls"] == 4  # a backend listed twice counts once


@pytest.mark.integration
def test_a_mixture_trains_on_each_member_in_turn_and_reports_dev_per_member(compose_train, tmp_path, tiny_models):
    cfg = compose_train(
        *TINY_TRAINING, "steps=4", "eval_every=2", "task=mixture", "task.members=[trec,subj]",
        f"paths.outputs_dir={tmp_path}", f"paths.run_dir={tmp_path}/run", "system_metrics_interval_s=null",
        *tiny_models,
    )  # fmt: skip
    score = train(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("prewrite-mixture").experiment_id])
    metrics = run.data.metrics
    for prefix in ("dev/", "dev/initial_instruction/"):
        members = [metrics[f"{prefix}{name}/accuracy"] for name in ("trec", "subj")]
        assert metrics[f"{prefix}accuracy"] == pytest.approx(sum(members) / 2)
    rows = [json.loads(line) for line in (tmp_path / "run" / "rewrites.jsonl").read_text().splitlines()]
    train_tasks = [r["task"] for r in rows if r["split"] == "train"]
    assert train_tasks == ["trec"] * 2 + ["subj"] * 2 + ["trec"] * 2 + ["subj"] * 2  # 2 rewrites per step, in turn
    assert {r["split"] for r in rows} >= {"initial", "initial/trec", "initial/subj", "dev", "dev/trec", "dev/subj"}
    info = json.loads((tmp_path / "run" / "rewriter" / "prewrite.json").read_text())
    assert info["task"] == "mixture" and info["trained_on"] == ["trec", "subj"]
    assert set(info["rewrites"]) == {"trec", "subj"} and info["score"] == score
