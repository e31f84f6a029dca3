"""Config values that cannot work are refused before any model loads, with the key, what is allowed and
the value; every shipped algorithm, experiment and sweep setting passes."""

import subprocess
import sys

import pytest

from prewrite.config_check import ConfigError, check_training
from tests.conftest import CONF, ROOT


@pytest.mark.parametrize("algorithm", sorted(f.stem for f in (CONF / "algorithm").glob("*.yaml")))
def test_every_shipped_algorithm_passes(compose_train, algorithm):
    check_training(compose_train(f"algorithm={algorithm}"))


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_passes(compose_train, experiment):
    check_training(compose_train(f"experiment={experiment}"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.num_generations=1", "algorithm.num_generations=1; expected an integer >= 2"),
        ("steps=0", "steps=0; expected an integer >= 1"),
        ("examples_per_step=0", "examples_per_step=0; expected an integer >= 1"),
        ("dev_examples=0", "dev_examples=0; expected an integer >= 1 or null"),
        ("eval_every=2.5", "eval_every=2.5; expected an integer >= 1"),
        ("algorithm.loss_type=dapoo", "algorithm.loss_type='dapoo'; expected one of grpo, dapo, dr_grpo, bnpo"),
        ("algorithm.scale_rewards=std", "algorithm.scale_rewards='std'; expected one of group, batch, none"),
        ("algorithm.name=grp0", "algorithm.name='grp0'; expected one of grpo, ppo"),
        ("algorithm.temperature=0", "algorithm.temperature=0; expected a number > 0"),
        ("algorithm.top_p=1.5", "algorithm.top_p=1.5; expected a number > 0 and <= 1"),
        ("algorithm.beta=-0.1", "algorithm.beta=-0.1; expected a number >= 0"),
        ("algorithm.learning_rate=fast", "algorithm.learning_rate='fast'; expected a number >= 0"),
    ],
)
def test_a_value_that_cannot_work_is_named(compose_train, override, message):
    with pytest.raises(ConfigError) as e:
        check_training(compose_train(override))
    assert str(e.value) == message


def test_ppo_rules_apply_to_ppo(compose_train):
    with pytest.raises(ConfigError, match=r"algorithm.lam=1.5; expected a number >= 0 and <= 1"):
        check_training(compose_train("algorithm=ppo", "algorithm.lam=1.5"))
    with pytest.raises(ConfigError, match="num_mini_batches=4 is more than algorithm.num_generations=2"):
        check_training(compose_train("algorithm=ppo", "algorithm.num_generations=2", "algorithm.num_mini_batches=4"))
    check_training(compose_train("algorithm=ppo", "algorithm.num_generations=1"))  # a batch of one is fine for PPO


def test_the_cli_refuses_in_one_line_before_any_model_loads(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "prewrite.train", "algorithm.loss_type=dapoo", f"paths.outputs_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "prewrite.train: algorithm.loss_type='dapoo'; expected one of grpo, dapo, dr_grpo, bnpo"
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started, not even the MLflow run
