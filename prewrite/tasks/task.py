"""A task: its train / dev / test splits, the template that joins an instruction with an input, and
the parsing of the task LLM's answer.

Splits are kept apart by construction: dev is carved from train by a seeded permutation and removed
from it; test is read from its own file and only ever used for reporting.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prewrite.tasks.io import data_path, read_jsonl

SPLITS = ("train", "dev", "test")


@dataclass
class Task:
    name: str
    instruction: str  # the initial, under-optimized instruction t
    template: str  # e.g. "{instruction}\n\nSentence: {sentence}\nAnswer:"
    input_fields: list[str]
    label_field: str
    labels: dict[Any, str]  # gold value -> verbalizer the task LLM is expected to say
    splits: dict[str, list[dict]] = field(default_factory=dict)

    def prompt(self, instruction: str, row: Mapping) -> str:
        return self.template.format(instruction=instruction, **{k: row[k] for k in self.input_fields})

    def gold(self, row: Mapping) -> Any:
        return row[self.label_field]

    def parse(self, answer: str) -> Any | None:
        """The label whose verbalizer appears first (as a whole word) in the answer; None if none does."""
        text = answer.lower()
        best = None
        for label, word in self.labels.items():
            m = re.search(rf"(?<![\w]){re.escape(word.lower())}(?![\w])", text)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), label)
        return None if best is None else best[1]

    def sample(self, split: str, n: int | None, seed: Sequence[int]) -> list[dict]:
        """n rows drawn without replacement, reproducibly from `seed` (e.g. [run_seed, step])."""
        rows = self.splits[split]
        if n is None or n >= len(rows):
            return list(rows)
        idx = np.random.default_rng(list(seed)).choice(len(rows), size=n, replace=False)
        return [rows[i] for i in sorted(idx)]


def _check_rows(rows: list[dict], path, task: str, fields: list[str], label_field: str, labels: Mapping) -> None:
    for lineno, row in enumerate(rows, start=1):
        for f in [*fields, label_field]:
            if f not in row:
                raise ValueError(f"{path}: row {lineno} has no field {f!r} required by task {task!r}")
        if row[label_field] not in labels:
            raise ValueError(
                f"{path}: row {lineno}: label {row[label_field]!r} is not in the label set of task {task!r} "
                f"({sorted(labels, key=str)})"
            )


def load_task(cfg: Mapping) -> Task:
    """Build a Task from its config (conf/task/*.yaml)."""
    placeholders = {name for _, name, _, _ in string.Formatter().parse(cfg["template"]) if name}
    expected = {"instruction", *cfg["input_fields"]}
    if placeholders != expected:
        raise ValueError(
            f"task {cfg['name']!r}: template placeholders {sorted(placeholders)} must be exactly {sorted(expected)}"
        )
    labels = dict(cfg["labels"])
    raw: dict[str, list[dict]] = {}
    for split, rel in cfg["files"].items():
        if split not in SPLITS:
            raise ValueError(f"task {cfg['name']!r}: unknown split {split!r} in files; expected one of {SPLITS}")
        path = data_path(rel)
        raw[split] = read_jsonl(path)
        _check_rows(raw[split], path, cfg["name"], list(cfg["input_fields"]), cfg["label_field"], labels)

    if "dev" not in raw:
        dev_size = cfg["dev_size"]
        if not 0 < dev_size < len(raw["train"]):
            raise ValueError(f"task {cfg['name']!r}: dev_size={dev_size} must be in (0, {len(raw['train'])})")
        perm = np.random.default_rng(cfg["split_seed"]).permutation(len(raw["train"]))
        dev_idx = set(perm[:dev_size].tolist())
        raw["dev"] = [r for i, r in enumerate(raw["train"]) if i in dev_idx]
        raw["train"] = [r for i, r in enumerate(raw["train"]) if i not in dev_idx]

    return Task(
        name=cfg["name"],
        instruction=cfg["instruction"],
        template=cfg["template"],
        input_fields=list(cfg["input_fields"]),
        label_field=cfg["label_field"],
        labels=labels,
        splits=raw,
    )
