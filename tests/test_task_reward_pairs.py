"""Every task=X reward=Y pair composes and builds its scorer; every task (with the reward named by its
metric) and every reward (on one task of each kind) runs one reward computation through the real
embedded task model on a few rows. Running all 135 pairs through the model took 3 minutes on a 2-core
AVX512-BF16 EPYC, and the other pairs repeat code those runs cover."""

import json

import pytest

from prewrite.backends.hf import HFBackend
from prewrite.rewards import RewriteScorer, metrics
from prewrite.tasks import load_task
from tests.conftest import CONF

pytestmark = pytest.mark.integration

# every task but the mixture, which is its members (tests/test_mixture.py)
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml") if p.stem != "mixture")
REWARDS = sorted(p.stem for p in (CONF / "reward").glob("*.yaml"))
RUN_EVERY_REWARD_ON = {"sst2_sentences", "nq_open", "gsm8k"}  # classification, qa, math


@pytest.fixture(scope="module")
def backend():
    return HFBackend("embedded:smollm2-135m-instruct")


@pytest.fixture(scope="module")
def user_rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "rows.jsonl"
    rows = [{"instruction": "Answer.", "input": f"Capital of country {i}?", "output": f"city {i}"} for i in range(300)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


_tasks: dict = {}


@pytest.mark.parametrize("reward", REWARDS)
@pytest.mark.parametrize("task_name", TASKS)
def test_pair_scores_real_rows(compose_train, backend, user_rows, task_name, reward):
    extra = [f"task.path={user_rows}"] if task_name == "jsonl" else []
    cfg = compose_train(f"task={task_name}", f"reward={reward}", *extra)
    if task_name not in _tasks:  # loading is the same for every reward
        _tasks[task_name] = load_task(cfg.task)
    task = _tasks[task_name]
    backend.max_new_tokens = 16  # a few tokens suffice to exercise parsing; math answers get cut short
    if reward.startswith("label_") and task.kind != "classification":  # refused up front, with the reason
        with pytest.raises(ValueError, match="is for classification tasks"):
            RewriteScorer(task, backend, cfg.reward.reward_funcs, cfg.reward.reward_weights)
        return
    scorer = RewriteScorer(task, backend, cfg.reward.reward_funcs, cfg.reward.reward_weights, report=[task.metric])
    assert task.metric in scorer.metric_names
    if reward != task.metric and task_name not in RUN_EVERY_REWARD_ON:
        return
    rows = task.sample("test", 2, seed=[0])
    before = backend.num_calls
    scores = scorer([task.instruction], rows)
    assert backend.num_calls > before  # the real task model ran
    assert len(scores.rewards) == 1
    assert scores.rewards[0] is None or isinstance(scores.rewards[0], float)
    assert set(scorer.metric_names) == set(scores.metrics) and task.metric in scores.metrics
    for name, values in scores.metrics.items():
        bound = metrics.MARGIN_CLIP if name == "label_margin" else 1.0
        assert values[0] is None or -bound <= values[0] <= bound, (name, values)
