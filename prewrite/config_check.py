"""Checks a training config's types, ranges and allowed names before any model loads.

A typo or an impossible value should cost a second, not a model load and a step-0 dev scoring (which
may be billed by a paid API). Each rule names its key, what is allowed, and the value it got. The task
and the reward are checked where they are built (`load_task`, `RewriteScorer`), also before any model
loads; this covers the loop and the algorithm.
"""

from __future__ import annotations

import string
from collections.abc import Callable

from omegaconf import DictConfig

from prewrite.algorithms.grpo import LOSS_TYPES, SCALE_REWARDS
from prewrite.algorithms.updates import ALGORITHMS


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the allowed values and the value."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def integer(minimum: int, nullable: bool = False) -> tuple[Callable, str]:
    what = f"an integer >= {minimum}" + (" or null" if nullable else "")
    return (lambda v: (nullable and v is None) or (_is_int(v) and v >= minimum)), what


def number(low: float, high: float | None = None, low_open: bool = False, nullable: bool = False):
    def ok(v) -> bool:
        if nullable and v is None:
            return True
        return _is_number(v) and (v > low if low_open else v >= low) and (high is None or v <= high)

    what = f"a number {'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
    return ok, what + (" or null" if nullable else "")


def one_of(*allowed: str) -> tuple[Callable, str]:
    return (lambda v: v in allowed), f"one of {', '.join(allowed)}"


TEST_ROWS = {  # evaluate, search and compare: which test rows are reported on
    "test_examples": integer(1, nullable=True),
    "test_seed": integer(0),
}
DECODING = ("auto", "generate")  # rollout=hf: the decoding loop where the policy allows it, or always generate
REWRITE_MODES = ("task", "input")  # one rewrite per task, or one per input (conf/train.yaml rewrite_mode)
LOOP = {
    "seed": integer(0),
    "steps": integer(1),
    "examples_per_step": integer(1),
    "dev_examples": integer(1, nullable=True),
    "eval_every": integer(1),
    "save_every": integer(1, nullable=True),
    "stages": integer(1),
    "early_stopping_patience": integer(1, nullable=True),
    "max_skipped_updates_in_a_row": integer(1),
}
SAMPLING_AND_OPTIMIZER = {
    "max_completion_length": integer(1),
    "max_prompt_length": integer(1, nullable=True),
    "temperature": number(0, low_open=True),
    "top_p": number(0, 1, low_open=True),
    "learning_rate": number(0),  # 0 = a frozen policy (a baseline, a test of early stopping)
    "weight_decay": number(0),
    "warmup_steps": integer(0),
    "max_grad_norm": number(0, low_open=True, nullable=True),
    "gradient_accumulation_steps": integer(1),
}
GRPO = {
    "num_generations": integer(2),  # a group of one has no spread: every advantage would be 0 (TRL refuses it too)
    "scale_rewards": one_of(*SCALE_REWARDS),
    "loss_type": one_of(*LOSS_TYPES),
    "epsilon": number(0),
    "epsilon_high": number(0, nullable=True),
    "beta": number(0),
    "num_iterations": integer(1),
}
PPO = {
    "num_generations": integer(1),
    "num_ppo_epochs": integer(1),
    "num_mini_batches": integer(1),
    "cliprange": number(0, low_open=True),
    "cliprange_value": number(0, low_open=True),
    "vf_coef": number(0),
    "gamma": number(0, 1),
    "lam": number(0, 1),
    "kl_coef": number(0),
    "target": number(0, low_open=True),
    "horizon": number(0, low_open=True),
}


def _check(section: DictConfig, rules: dict, prefix: str) -> None:
    for key, (ok, what) in rules.items():
        if key not in section:
            raise ConfigError(f"{prefix}{key} is missing; expected {what}")
        if not ok(section[key]):
            raise ConfigError(f"{prefix}{key}={section[key]!r}; expected {what}")


def check_decoding(decoding: str) -> None:
    """Raises ConfigError on a rollout.decoding that is not one of DECODING."""
    if decoding not in DECODING:
        raise ConfigError(f"rollout.decoding={decoding!r}; expected one of {', '.join(DECODING)}")


def check_training(cfg: DictConfig) -> None:
    """Raises ConfigError on the first key of the loop or the algorithm that cannot work."""
    _check(cfg, LOOP, "")
    _check_rewrite_mode(cfg)
    algo = cfg.algorithm
    ok, what = one_of(*ALGORITHMS)
    if not ok(algo.get("name")):
        raise ConfigError(f"algorithm.name={algo.get('name')!r}; expected {what}")
    _check(algo, SAMPLING_AND_OPTIMIZER, "algorithm.")
    _check(algo, GRPO if algo.name == "grpo" else PPO, "algorithm.")
    strategy_cfg = cfg.get("hardware", {}).get("strategy")
    strategy = strategy_cfg.get("_target_", "") if isinstance(strategy_cfg, DictConfig) else str(strategy_cfg)
    if algo.gradient_accumulation_steps > 1 and "deepspeed" in strategy.lower():
        raise ConfigError(
            f"algorithm.gradient_accumulation_steps={algo.gradient_accumulation_steps} with {strategy}: DeepSpeed "
            "accumulates by its own engine setting, which this update does not drive; use 1, or hardware=fsdp"
        )
    one_process = strategy in ("auto", "single_device") or "SingleDevice" in strategy
    if "vllm" in str(cfg.get("rollout", {}).get("_target_", "")).lower() and not one_process:
        raise ConfigError(
            f"rollout=vllm with {strategy}: the engine runs inside the training process, where vLLM starts "
            "torch.distributed as a world of one before Lightning starts the ranks' process group, so ranks "
            "would not share gradients; use rollout=hf with this strategy, or hardware=cpu or gpu with rollout=vllm"
        )
    rollout = cfg.get("rollout") or {}
    if str(rollout.get("_target_", "")).endswith("HFRollout"):
        check_decoding(rollout.get("decoding", "auto"))
    if algo.name == "ppo" and algo.num_mini_batches > algo.num_generations:
        raise ConfigError(
            f"algorithm.num_mini_batches={algo.num_mini_batches} is more than algorithm.num_generations="
            f"{algo.num_generations}: every minibatch needs at least one rewrite"
        )


def check_test_rows(cfg: DictConfig) -> None:
    """Raises ConfigError on a test subset that cannot be drawn, before any model loads."""
    _check(cfg, TEST_ROWS, "")


def _check_rewrite_mode(cfg: DictConfig) -> None:
    """The meta prompt of the rewrite mode names exactly the fields it is filled with; stages rewrite one
    instruction, which a mixture or per-input rewrites do not hand over."""
    mode = cfg.get("rewrite_mode", "task")
    ok, what = one_of(*REWRITE_MODES)
    if not ok(mode):
        raise ConfigError(f"rewrite_mode={mode!r}; expected {what}")
    key = "input_meta_prompt" if mode == "input" else "meta_prompt"
    expected = {"instruction", "input"} if mode == "input" else {"instruction"}
    found = {name for _, name, _, _ in string.Formatter().parse(str(cfg.get(key) or "")) if name is not None}
    if found != expected:
        raise ConfigError(f"{key} has placeholders {sorted(found)}; rewrite_mode={mode} expects {sorted(expected)}")
    mixture = cfg.task.get("kind") == "mixture"
    if cfg.stages > 1 and (mixture or mode == "input"):
        what = "task=mixture" if mixture else "rewrite_mode=input"
        raise ConfigError(f"stages={cfg.stages} with {what}: a stage rewrites the last stage's one best rewrite")
