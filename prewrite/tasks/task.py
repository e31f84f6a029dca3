"""A task: its train / dev / test splits, the template that joins an instruction with an input, the
gold answer of a row and the parsing of the task LLM's answer.

Splits are kept apart by construction: a split with no file of its own is carved from another by a
seeded permutation and removed from it; duplicate rows inside one file are dropped before carving
(and, with `drop_test_overlap: true`, rows of other files that repeat a test input);
and after loading, no row (keyed by its normalized input fields) may appear in two splits, or loading
fails. Test is only ever used for reporting.

Data comes from one of three sources (`task.source`):

- `packaged`: JSONL files shipped in prewrite/tasks/data (`files`, relative to that folder);
- `hub`: the Hugging Face hub through `datasets.load_dataset` (the task's `hub` block);
- `file`: the user's own JSONL / CSV / Parquet rows with `instruction`, `input`, `output` and
  optional `task` and `template` columns (conf/task/jsonl.yaml, `task.path=...`).
"""

from __future__ import annotations

import copy
import logging
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prewrite.tasks import answers
from prewrite.tasks.io import data_path, read_jsonl, read_rows

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
EVAL_SAMPLE_STREAM = {"dev": 1 << 30, "test": 1 << 31}  # seed-stream ids far from any step number
KINDS = ("classification", "qa", "math")
SOURCES = ("packaged", "hub", "file")
DEFAULT_METRIC = {"classification": "accuracy", "qa": "f1", "math": "math_verify"}
USER_TEMPLATE = "{instruction}\n{input}"
# What the scorer passes to reward functions beside the dataset columns (TRL's convention: every column
# is a keyword argument): a data column of one of these names would collide, so loading refuses it.
RESERVED_COLUMNS = ("prompts", "completions", "task", "gold", "rewrite", "loglikelihoods", "label_loglikelihoods")
# The user-file columns that configure the task rather than hold an example: read once by the loader
# (they must be the same on every row), then dropped from the rows.
USER_TASK_COLUMNS = ("instruction", "task", "template")


@dataclass
class Task:
    name: str
    instruction: str  # the initial, under-optimized instruction t
    template: str  # e.g. "{instruction}\n\nSentence: {sentence}\nAnswer:"
    input_fields: list[str]
    answer_field: str  # the column holding the gold answer
    labels: dict[Any, str] | None  # classification: gold value -> verbalizer the task LLM must say
    kind: str = "classification"  # one of KINDS
    metric: str = "accuracy"  # the task's default metric (reported on dev, the sweep objective)
    # math: a worked solution whose last \boxed{} is the gold where answer_field is empty
    solution_field: str | None = None
    # classification: dev and test subsets (eval_rows) keep their split's label shares, so a rewrite that
    # only moves answers toward one label cannot win dev rows that are richer in that label than test
    stratify: bool = False
    splits: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def required_placeholders(self) -> list[str]:
        """Input placeholders (`{field}`) that the initial instruction carries: a rewrite must keep them
        (the instruction is then a template of its own; see the `template` reward)."""
        return [f"{{{f}}}" for f in self.input_fields if f"{{{f}}}" in self.instruction]

    def prompt(self, instruction: str, row: Mapping) -> str:
        fields = {k: row[k] for k in self.input_fields}
        # Fill the placeholders an instruction carries; plain replacement, since a generated rewrite may
        # hold any other braces, which str.format would choke on.
        for key, value in fields.items():
            instruction = instruction.replace(f"{{{key}}}", str(value))
        return self.template.format(instruction=instruction, **fields)

    def input_text(self, row: Mapping) -> str:
        """A row's input as the rewriter sees it for a per-input rewrite: the field's text, or one
        `field: text` line per field."""
        if len(self.input_fields) == 1:
            return str(row[self.input_fields[0]])
        return "\n".join(f"{f}: {row[f]}" for f in self.input_fields)

    def gold(self, row: Mapping) -> Any:
        """classification: the label as in the data; qa: list of gold aliases; math: the final answer (str)."""
        if self.kind == "classification":
            return row[self.answer_field]
        if self.kind == "qa":
            value = row[self.answer_field]
            if isinstance(value, str):
                return [value]
            return [str(v) for v in value]
        gold = answers.final_answer(row.get(self.answer_field))
        if gold is None and self.solution_field:
            gold = answers.final_answer(answers.last_boxed(str(row.get(self.solution_field) or "")))
        if gold is None:
            raise ValueError(f"task {self.name!r}: no final answer in {self.answer_field!r} of row {dict(row)!r}")
        return gold

    def parse(self, answer: str) -> Any | None:
        """classification: the label whose verbalizer appears first (as a whole word), None if none does;
        qa: the first non-empty line, stripped, without a trailing period (maybe "");
        math: the last \\boxed{} content, else the last number, else None."""
        if self.kind == "qa":
            return answers.parse_short_answer(answer)
        if self.kind == "math":
            return answers.parse_math(answer)
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

    def eval_rows(self, split: str, n: int | None, seed: int) -> list[dict]:
        """The fixed seeded subset of dev or test that evaluations score: the same rows at every
        evaluation, stage and script given the same seed (the tools pass `test_seed` for test, so every
        run seed reports on one test subset), and apart from the per-step training samples. With
        `stratify`, each gold label keeps its share of the split in the subset."""
        stream = [seed, EVAL_SAMPLE_STREAM[split]]
        rows = self.splits[split]
        if not self.stratify or n is None or n >= len(rows):
            return self.sample(split, n, seed=stream)
        return [rows[i] for i in sorted(self._stratified_indices(rows, n, stream))]

    def _stratified_indices(self, rows: list[dict], n: int, seed: Sequence[int]) -> list[int]:
        """n row indices whose label counts are the split's shares of n (largest remainder, ties in
        label order), each label's rows drawn without replacement by one seeded generator."""
        by_label: dict[Any, list[int]] = {label: [] for label in self.labels}
        for i, row in enumerate(rows):
            by_label[row[self.answer_field]].append(i)
        exact = {label: n * len(idx) / len(rows) for label, idx in by_label.items()}
        quota = {label: int(share) for label, share in exact.items()}
        by_remainder = sorted(by_label, key=lambda label: quota[label] - exact[label])  # stable: label order
        for label in by_remainder[: n - sum(quota.values())]:
            quota[label] += 1
        rng = np.random.default_rng(list(seed))
        picked = []
        for label, idx in by_label.items():
            picked += [idx[j] for j in rng.choice(len(idx), size=quota[label], replace=False)]
        return picked


# ---------------------------------------------------------------------------------------------------
# loading


def load_task(cfg: Mapping) -> Task:
    """Build a Task from its config (conf/task/*.yaml)."""
    cfg = _plain(cfg)
    name = cfg.get("name", "?")
    if cfg.get("kind") == "mixture":
        raise ValueError(
            f"task={name}: a mixture trains one rewriter on several tasks (python -m prewrite.train); evaluation, "
            "search and comparison take one task: task=<a member, or a task the rewriter has not seen> "
            "(prewrite.compare compares a mixture-trained rewriter on unseen tasks with transfer_to=[...])"
        )
    source = cfg.get("source", "packaged")
    if source == "file":
        return _load_user_rows(cfg)
    if source == "packaged":
        raw, origin = {}, {}
        for split, rel in cfg["files"].items():
            _check_split_name(name, split, "files")
            origin[split] = data_path(rel)
            raw[split] = read_jsonl(origin[split])
        return _build(cfg, raw, origin)
    if source == "hub":
        hub = cfg.get("hub") or {}
        cfg = {**cfg, **(hub.get("overrides") or {})}
        raw, origin = _load_hub(name, hub)
        return _build(cfg, raw, origin)
    raise ValueError(f"task {name!r}: unknown source {source!r}; expected one of {list(SOURCES)}")


def _plain(cfg: Mapping) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):  # a missing mandatory value (???) raises, naming the key
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except ImportError:  # pragma: no cover
        pass
    return copy.deepcopy(dict(cfg))


def _check_split_name(task: str, split: str, where: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"task {task!r}: unknown split {split!r} in {where}; expected one of {SPLITS}")


def _load_hub(task: str, hub: Mapping) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Rows of each split from `datasets.load_dataset(path, name, split=...)`; a split given as a
    mapping may name another dataset (`path`, `name`) and its own column renames."""
    import datasets

    if not hub.get("path") or not hub.get("splits"):
        raise ValueError(f"task {task!r}: source=hub needs a hub block with `path` and `splits`")
    raw, origin = {}, {}
    for split, spec in hub["splits"].items():
        _check_split_name(task, split, "hub.splits")
        spec = {"split": spec} if isinstance(spec, str) else dict(spec)
        path, name = spec.get("path", hub["path"]), spec.get("name", hub.get("name"))
        columns = {**(hub.get("columns") or {}), **(spec.get("columns") or {})}
        ds = datasets.load_dataset(path, name, split=spec["split"])
        raw[split] = [{columns.get(k, k): v for k, v in dict(r).items()} for r in ds]
        origin[split] = f"{path}" + (f"/{name}" if name else "") + f"[{spec['split']}]"
    return raw, origin


def _check_config(cfg: Mapping) -> None:
    name = cfg["name"]
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ValueError(f"task {name!r}: unknown kind {kind!r}; valid kinds are {list(KINDS)}")
    placeholders = {n for _, n, _, _ in string.Formatter().parse(cfg["template"]) if n}
    # Input fields the instruction carries itself are left out of the template (else shown twice).
    in_instruction = {f for f in cfg["input_fields"] if f"{{{f}}}" in cfg["instruction"]}
    expected = {"instruction", *cfg["input_fields"]} - in_instruction
    if placeholders != expected:
        raise ValueError(
            f"task {name!r}: template placeholders {sorted(placeholders)} must be exactly {sorted(expected)}"
            + (f" (the instruction already holds {sorted(in_instruction)})" if in_instruction else "")
        )
    if kind == "classification" and not cfg.get("labels"):
        raise ValueError(f"task {name!r}: a classification task needs `labels` (gold value -> verbalizer)")
    if kind != "classification" and cfg.get("labels"):
        raise ValueError(f"task {name!r}: `labels` are for classification tasks only (kind is {kind!r})")
    stratify = cfg.get("stratify", False)
    if not isinstance(stratify, bool):
        raise ValueError(f"task {name!r}: task.stratify must be true or false (got {stratify!r})")
    if stratify and kind != "classification":
        raise ValueError(
            f"task {name!r}: task.stratify=true keeps each label's share in the dev and test subsets, so it needs "
            f"a classification task (kind is {kind!r})"
        )


def _build(cfg: Mapping, raw: dict[str, list[dict]], origin: Mapping[str, Any]) -> Task:
    """Check the rows, drop duplicates, carve the missing splits and check that they are disjoint."""
    _check_config(cfg)
    name = cfg["name"]
    task = Task(
        name=name,
        instruction=cfg["instruction"],
        template=cfg["template"],
        input_fields=list(cfg["input_fields"]),
        answer_field=cfg["answer_field"],
        labels=dict(cfg["labels"]) if cfg["kind"] == "classification" else None,
        kind=cfg["kind"],
        metric=cfg.get("metric") or DEFAULT_METRIC[cfg["kind"]],
        solution_field=cfg.get("solution_field"),
        stratify=cfg.get("stratify", False),
    )
    for split, rows in raw.items():
        _check_rows(task, rows, origin[split])
        raw[split] = _drop_duplicates(task, rows, origin[split])
    if cfg.get("drop_test_overlap", False):
        _drop_test_overlap(task, raw, origin)
    task.splits = _carve(task, raw, cfg)
    _check_disjoint(task)
    return task


def _check_rows(task: Task, rows: list[dict], path, lines: Sequence | None = None) -> None:
    """Every row has the input fields and a gold that can be read (in the label set for classification)."""
    for i, row in enumerate(rows):
        where = f"row {i + 1}" if lines is None else lines[i]
        reserved = [c for c in RESERVED_COLUMNS if c in row]
        if reserved:
            raise ValueError(
                f"{path}: {where} has a column named {reserved[0]!r}, a name the harness passes to reward functions "
                f"itself ({', '.join(RESERVED_COLUMNS)}); rename that column"
            )
        needed = [*task.input_fields]
        if not (task.kind == "math" and task.solution_field and task.solution_field in row):
            needed.append(task.answer_field)
        for f in needed:
            if f not in row:
                raise ValueError(f"{path}: {where} has no field {f!r} required by task {task.name!r}")
        if task.kind == "classification":
            if row[task.answer_field] not in task.labels:
                raise ValueError(
                    f"{path}: {where}: label {row[task.answer_field]!r} is not in the label set of task "
                    f"{task.name!r} ({sorted(task.labels, key=str)})"
                )
        elif task.kind == "qa":
            value = row[task.answer_field]
            ok = (isinstance(value, str) and value.strip()) or (
                isinstance(value, list) and value and all(isinstance(v, str | int | float) for v in value)
            )
            if not ok:
                raise ValueError(f"{path}: {where}: gold {value!r} is not a non-empty answer or list of answers")
        else:
            try:
                task.gold(row)
            except ValueError:
                raise ValueError(f"{path}: {where}: no final answer in {task.answer_field!r}") from None


def row_key(task: Task, row: Mapping) -> tuple[str, ...]:
    """A row's content key: its input fields, whitespace-collapsed and lower-cased."""
    return tuple(" ".join(str(row[f]).split()).lower() for f in task.input_fields)


def _drop_duplicates(task: Task, rows: list[dict], path) -> list[dict]:
    seen, kept = set(), []
    for row in rows:
        k = row_key(task, row)
        if k not in seen:
            seen.add(k)
            kept.append(row)
    if len(kept) < len(rows):
        log.info("%s: dropped %d duplicate rows (same input as an earlier row)", path, len(rows) - len(kept))
    return kept


def _drop_test_overlap(task: Task, raw: dict[str, list[dict]], origin: Mapping[str, Any]) -> None:
    """Drops from the other files the rows whose input is also a test row (`drop_test_overlap: true`):
    for benchmarks whose official train file repeats a few test inputs (TREC, sentence-level SST-2).
    Test stays whole, so scores remain on the official test split."""
    if "test" not in raw:
        return
    test_keys = {row_key(task, r) for r in raw["test"]}
    for split in [s for s in raw if s != "test"]:
        kept = [r for r in raw[split] if row_key(task, r) not in test_keys]
        if len(kept) < len(raw[split]):
            log.info("%s: dropped %d rows whose input is also a test row", origin[split], len(raw[split]) - len(kept))
        raw[split] = kept


def _carve(task: Task, raw: dict[str, list[dict]], cfg: Mapping) -> dict[str, list[dict]]:
    """The splits that have no rows of their own, carved (seeded by split_seed) out of another split:
    with no train, train (train_size) and dev (dev_size) come out of test; with no test (the user's
    file), test (test_size) comes out of train; with no dev, dev (dev_size) comes out of train."""
    splits = dict(raw)
    seed = cfg.get("split_seed", 0)
    if "test" not in splits and "train" not in splits:
        raise ValueError(f"task {task.name!r}: needs a train or a test split")
    if "train" not in splits:  # e.g. MATH-500: train and dev carved out of the one benchmark file
        sizes = [("dev", _size(task, cfg, "dev_size"))] if "dev" not in splits else []
        sizes.append(("train", _size(task, cfg, "train_size")))
        carved, splits["test"] = _take(task, splits["test"], sizes, seed, "test")
        splits.update(carved)
    sizes = []
    if "test" not in splits:
        sizes.append(("test", _size(task, cfg, "test_size")))
    if "dev" not in splits:
        sizes.append(("dev", _size(task, cfg, "dev_size")))
    if sizes:
        carved, splits["train"] = _take(task, splits["train"], sizes, seed, "train")
        splits.update(carved)
    return {s: splits[s] for s in SPLITS}


def _size(task: Task, cfg: Mapping, key: str) -> int:
    n = cfg.get(key)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"task {task.name!r}: {key} must be a positive integer (got {n!r})")
    return n


def _take(task: Task, rows: list[dict], sizes: list[tuple[str, int]], seed: int, source: str):
    total = sum(n for _, n in sizes)
    if total >= len(rows):
        wanted = ", ".join(f"{s}={n}" for s, n in sizes)
        fits = max(1, (len(rows) - 1) // (2 * len(sizes)))  # leaves at least half the rows to train on
        options = " ".join(f"task.{s}_size={fits}" for s, _ in sizes)
        raise ValueError(
            f"task {task.name!r}: carving {wanted} out of {source} ({len(rows)} rows) must leave at least one "
            f"{source} row; set smaller sizes, e.g. {options}"
        )
    perm = np.random.default_rng(seed).permutation(len(rows))
    carved, start = {}, 0
    for split, n in sizes:
        carved[split] = [rows[i] for i in sorted(perm[start : start + n].tolist())]
        start += n
    rest = [rows[i] for i in sorted(perm[start:].tolist())]
    return carved, rest


def _check_disjoint(task: Task) -> None:
    keys = {s: {row_key(task, r) for r in task.splits[s]} for s in SPLITS}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        shared = keys[a] & keys[b]
        if shared:
            example = " | ".join(sorted(shared)[0])
            raise ValueError(
                f"task {task.name!r}: {len(shared)} row(s) appear in both {a} and {b}, e.g. {example[:120]!r}; "
                "splits must be disjoint"
                + ("; task.drop_test_overlap=true drops them from the other files" if b == "test" else "")
            )


# ---------------------------------------------------------------------------------------------------
# the user's own rows: instruction / input / output [/ task / template]


def _load_user_rows(cfg: dict) -> Task:
    name = cfg.get("name", "jsonl")
    if cfg.get("path") in (None, "", "???"):
        raise ValueError(f"task {name!r}: task.path is required (task=jsonl task.path=FILE.jsonl|.csv|.parquet)")
    required = ["input", "output"] + (["instruction"] if cfg.get("instruction") is None else [])
    raw, origin, lines = {}, {}, {}
    for split, key in (("train", "path"), ("dev", "dev_path"), ("test", "test_path")):
        if cfg.get(key) is None:
            continue
        path = Path(cfg[key]).expanduser()
        if path.suffix.lower() in (".jsonl", ".json"):
            linenos: list[int] = []
            rows = read_jsonl(path, linenos=linenos)
            lines[split] = [f"line {n}" for n in linenos]
        else:
            rows = read_rows(path, required=required, task=name)
            offset = 2 if path.suffix.lower() == ".csv" else 1  # CSV: line 1 is the header
            lines[split] = [f"{'line' if offset == 2 else 'row'} {i + offset}" for i in range(len(rows))]
        for row, where in zip(rows, lines[split], strict=True):
            for f in required:
                if f not in row:
                    raise ValueError(f"{path}: {where} has no field {f!r} required by task {name!r}")
        raw[split], origin[split] = rows, path

    def uniform(column: str, default, what: str, hint: str):
        first = None
        for split in raw:
            for row, where in zip(raw[split], lines[split], strict=True):
                value = row.get(column)
                value = default if value is None or value == "" else value
                if first is None:
                    first = (value, origin[split], where)
                elif value != first[0]:
                    raise ValueError(
                        f"{origin[split]}: {where}: {what} {value!r} differs from {first[0]!r} "
                        f"({first[1]}: {first[2]}); every row must have the same {what}{hint}. A file that "
                        "mixes tasks or instructions is several tasks: split it into one file per (task, "
                        "instruction) and train on each, e.g. python -m prewrite.train -m task=jsonl "
                        "task.path=part1.jsonl,part2.jsonl"
                    )
        return first[0]

    instruction = cfg.get("instruction")
    if instruction is None:
        instruction = uniform("instruction", None, "instruction", ", or set task.instruction=...")
        if instruction is None:  # the column is there but empty on every row
            where = origin["train"]
            raise ValueError(f"{where}: column 'instruction' is empty on every row: fill it or set task.instruction=")
    kind = cfg.get("kind") or uniform("task", "qa", "task", ", or set task.kind=...")
    template = cfg.get("template") or uniform("template", USER_TEMPLATE, "template", ", or set task.template=...")
    labels = None
    if kind == "classification":
        labels = {v: str(v) for v in sorted({r["output"] for r in raw["train"]}, key=str)}
    built = {
        **cfg,
        "name": name,
        "kind": kind,
        "instruction": instruction,
        "template": template,
        "input_fields": ["input"],
        "answer_field": "output",
        "labels": labels,
    }
    _check_config(built)
    if built.get("metric") and built["metric"] != DEFAULT_METRIC[kind]:
        log.warning(
            "task %r: %s rows scored with metric %r (usual: %r)", name, kind, built["metric"], DEFAULT_METRIC[kind]
        )
    # row checks name the file line (JSONL, CSV) or row (Parquet)
    raw = {s: [{k: v for k, v in row.items() if k not in USER_TASK_COLUMNS} for row in rows] for s, rows in raw.items()}
    probe = Task(name, instruction, template, ["input"], "output", labels, kind=kind)
    for split in raw:
        _check_rows(probe, raw[split], origin[split], lines[split])
    return _build(built, raw, origin)
