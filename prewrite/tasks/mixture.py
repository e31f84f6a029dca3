"""Several tasks in one training (`task=mixture task.members=[ag_news,trec,subj]`, conf/task/mixture.yaml).

Each rollout step draws its instruction and examples from one member (round-robin, or seeded by the
run seed and the step with `sampling: weighted`), so a group's rewrites still compete on the same
instruction and the same examples; dev is scored per member and averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from prewrite.tasks.task import Task, load_task

MIXTURE = "mixture"
TASK_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "task"  # where member names are looked up
SAMPLINGS = ("round_robin", "weighted")
MEMBER_STREAM = 1 << 29  # the weighted draw's seed stream, apart from the step's example sample


def is_mixture(task_cfg: Mapping) -> bool:
    return task_cfg.get("kind") == MIXTURE


def member_configs(task_cfg: Mapping) -> list[dict]:
    """The members' task configs: a name is conf/task/<name>.yaml; a mapping is a task config itself."""
    members = task_cfg.get("members")
    if not isinstance(members, Sequence) or isinstance(members, str) or len(members) < 2:
        raise ValueError(f"task.members={_plain(members)!r}; expected a list of at least two task names")
    return task_configs(members, "task.members")


def task_configs(tasks: Sequence, option: str) -> list[dict]:
    """Task configs from names of conf/task (or configs), as option `option` gives them; no task twice."""
    configs = []
    for task in tasks:
        if isinstance(task, str):
            path = TASK_CONFIGS / f"{task}.yaml"
            if task == MIXTURE or not path.is_file():
                known = sorted(p.stem for p in TASK_CONFIGS.glob("*.yaml") if p.stem != MIXTURE)
                raise ValueError(f"{option}: unknown task {task!r}; expected one of {known}")
            configs.append(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
        elif isinstance(task, Mapping):
            configs.append(_plain(task))
        else:
            raise ValueError(f"{option}: {task!r} is neither a task name nor a task config")
    names = [c.get("name") for c in configs]
    if len(set(names)) < len(names):
        raise ValueError(f"{option}: {names} names a task twice")
    return configs


def load_members(task_cfg: Mapping) -> list[Task]:
    """The tasks a training draws from: the mixture's members, checked to share one metric, or the one task."""
    if not is_mixture(task_cfg):
        return [load_task(task_cfg)]
    sampling, weights = task_cfg.get("sampling"), task_cfg.get("weights")
    if sampling not in SAMPLINGS:
        raise ValueError(f"task.sampling={sampling!r}; expected one of {', '.join(SAMPLINGS)}")
    tasks = [load_task(c) for c in member_configs(task_cfg)]
    if sampling == "weighted":
        ok = isinstance(weights, Sequence) and len(weights) == len(tasks) and all(_positive(w) for w in weights)
        if not ok:
            raise ValueError(
                f"task.weights={_plain(weights)!r}; sampling=weighted needs one positive number per member "
                f"({[t.name for t in tasks]})"
            )
    metric = task_cfg.get("metric")
    other = [f"{t.name} ({t.metric})" for t in tasks if t.metric != metric]
    if other:
        listed = ", ".join(other)
        raise ValueError(f"task.metric={metric!r} is averaged over the members on dev; {listed} report another")
    return tasks


def member_at(task_cfg: Mapping, n_members: int, seed: int, step: int) -> int:
    """Which member rollout step `step` draws from."""
    if n_members == 1 or task_cfg.get("sampling") != "weighted":
        return step % n_members
    p = np.asarray(task_cfg["weights"], dtype=float)
    return int(np.random.default_rng([seed, step, MEMBER_STREAM]).choice(n_members, p=p / p.sum()))


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
