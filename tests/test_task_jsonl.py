"""The user's own rows: task=jsonl task.path=FILE (JSONL, CSV or Parquet)."""

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task
from prewrite.tasks.task import RESERVED_COLUMNS, USER_TASK_COLUMNS, row_key
from tests.conftest import CONF
from tests.fake_backend import FakeBackend


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qa_rows(n=40, **extra):
    return [
        {"instruction": "Answer briefly.", "input": f"What is {i} + 1?", "output": str(i + 1), **extra}
        for i in range(n)
    ]


def cls_rows(n=40):
    return [
        {
            "instruction": "Is it even?",
            "input": f"n = {i}",
            "output": "yes" if i % 2 == 0 else "no",
            "task": "classification",
        }
        for i in range(n)
    ]


def user_cfg(path, **changes):
    cfg = OmegaConf.load(CONF / "task" / "jsonl.yaml")
    return OmegaConf.merge(cfg, {"path": str(path), "dev_size": 5, "test_size": 10}, changes)


def test_composing_without_a_path_names_it(compose_train):
    cfg = compose_train("task=jsonl")
    assert OmegaConf.missing_keys(cfg) == {"task.path"}
    with pytest.raises(MissingMandatoryValue, match="task.path"):
        load_task(cfg.task)


def test_composing_with_a_path_loads(compose_train, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", qa_rows(300))
    cfg = compose_train("task=jsonl", f"task.path={path}")
    assert not OmegaConf.missing_keys(cfg)
    task = load_task(cfg.task)
    assert task.kind == "qa" and task.instruction == "Answer briefly." and task.template == "{instruction}\n{input}"
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [300 - 64 - 128, 64, 128]


def test_qa_rows_are_carved_seeded_and_disjoint(tmp_path):
    task = load_task(user_cfg(write_jsonl(tmp_path / "rows.jsonl", qa_rows())))
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [25, 5, 10]
    keys = [{row_key(task, r) for r in task.splits[s]} for s in ("train", "dev", "test")]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    row = task.splits["test"][0]
    assert (
        task.gold(row) == [row["output"]] and task.prompt(task.instruction, row) == f"Answer briefly.\n{row['input']}"
    )
    assert task.parse(" 7.\nbecause") == "7" and task.metric == "f1"


def test_classification_labels_are_the_training_outputs(tmp_path):
    task = load_task(user_cfg(write_jsonl(tmp_path / "rows.jsonl", cls_rows()), metric="accuracy"))
    assert task.kind == "classification" and task.labels == {"no": "no", "yes": "yes"}
    assert task.parse("Yes.") == "yes"


def test_math_rows_and_a_custom_template(tmp_path):
    rows = [
        {
            "instruction": "Solve.",
            "input": f"{i} * 2",
            "output": f"so\n#### {2 * i:,}",
            "task": "math",
            "template": "{instruction}\n\nQ: {input}\nA:",
        }
        for i in range(995, 1035)
    ]
    task = load_task(user_cfg(write_jsonl(tmp_path / "rows.jsonl", rows), metric="math_verify"))
    row = task.splits["train"][0]
    assert task.kind == "math" and task.gold(row) == str(2 * int(row["input"].split()[0]))
    assert task.prompt("Be careful.", row).startswith("Be careful.\n\nQ: ")


def test_dev_and_test_files_and_a_label_outside_the_training_labels(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", cls_rows(20))
    dev = write_jsonl(tmp_path / "dev.jsonl", [{**r, "input": "d" + r["input"]} for r in cls_rows(4)])
    test = write_jsonl(tmp_path / "test.jsonl", [{**r, "input": "t" + r["input"]} for r in cls_rows(4)])
    task = load_task(user_cfg(train, dev_path=str(dev), test_path=str(test)))
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [20, 4, 4]
    bad = cls_rows(4)
    bad[2] = {**bad[2], "input": "tx", "output": "maybe"}
    write_jsonl(test, [{**r, "input": "t" + r["input"]} for r in bad])
    with pytest.raises(ValueError, match=rf"{test}: line 3: label 'maybe' is not in the label set"):
        load_task(user_cfg(train, dev_path=str(dev), test_path=str(test)))


def test_the_same_row_in_train_and_test_files_is_an_error(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(20))
    test = write_jsonl(tmp_path / "test.jsonl", qa_rows(3))
    with pytest.raises(ValueError, match="appear in both train and test"):
        load_task(user_cfg(train, test_path=str(test)))


def test_differing_instructions_name_the_line_and_suggest_the_override(tmp_path):
    rows = qa_rows(10)
    rows[6]["instruction"] = "Something else."
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"{path}: line 7: instruction 'Something else.' differs .*task.instruction="):
        load_task(user_cfg(path, dev_size=1, test_size=1))
    task = load_task(user_cfg(path, dev_size=1, test_size=1, instruction="Reply."))
    assert task.instruction == "Reply."


def test_mixed_task_kinds_name_the_line(tmp_path):
    rows = qa_rows(10)
    rows[3]["task"] = "math"
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"{path}: line 4: task 'math' differs from 'qa'") as e:
        load_task(user_cfg(path, dev_size=1, test_size=1))
    assert "split it into one file per (task, instruction)" in str(e.value)  # and how to train on each


def test_unknown_kind_in_the_rows_names_the_valid_kinds(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", qa_rows(10, task="summarization"))
    with pytest.raises(
        ValueError, match=r"unknown kind 'summarization'; valid kinds are \['classification', 'qa', 'math'\]"
    ):
        load_task(user_cfg(path, dev_size=1, test_size=1))


def test_missing_field_in_jsonl_names_field_task_and_file(tmp_path):
    rows = qa_rows(10)
    del rows[4]["output"]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"{path}: line 5 has no field 'output' required by task 'jsonl'"):
        load_task(user_cfg(path, dev_size=1, test_size=1))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(qa_rows(1)[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=rf"{path}:2: malformed JSON"):
        load_task(user_cfg(path))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet(tmp_path, suffix):
    df = pd.DataFrame(qa_rows())
    path = tmp_path / f"rows{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    task = load_task(user_cfg(path))
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [25, 5, 10]
    assert all(isinstance(task.gold(r)[0], str) for r in task.splits["train"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_missing_a_column_name_it_and_the_file(tmp_path, suffix):
    df = pd.DataFrame(qa_rows()).drop(columns=["output"])
    path = tmp_path / f"rows{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    with pytest.raises(ValueError, match=rf"{path}: no column 'output' required by task 'jsonl'"):
        load_task(user_cfg(path))


def test_csv_row_with_a_differing_instruction_names_its_line(tmp_path):
    rows = qa_rows(10)
    rows[2]["instruction"] = "Other."
    path = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"{path}: line 4: instruction 'Other.' differs"):  # line 1 is the header
        load_task(user_cfg(path, dev_size=1, test_size=1))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '.txt'"):
        load_task(user_cfg(path))


def test_task_columns_configure_the_task_and_leave_the_rows(tmp_path):
    rows = [{**r, "task": "qa", "template": "Q: {input}\n{instruction}", "source": "quiz"} for r in qa_rows()]
    task = load_task(user_cfg(write_jsonl(tmp_path / "rows.jsonl", rows)))
    assert task.kind == "qa" and task.template == "Q: {input}\n{instruction}"
    # instruction, task and template are read once; every other column stays a dataset column
    assert {k for s in task.splits.values() for r in s for k in r} == {"input", "output", "source"}


@pytest.mark.parametrize("column", [c for c in RESERVED_COLUMNS if c not in USER_TASK_COLUMNS])
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_column_with_a_reserved_name_is_refused_naming_file_line_and_column(tmp_path, column, suffix):
    rows = [{**r, column: "x"} for r in qa_rows()]
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        write_jsonl(path, rows)
    with pytest.raises(ValueError, match=rf"rows{suffix}: line [12] has a column named '{column}'.*rename"):
        load_task(user_cfg(path))


@pytest.mark.parametrize("column", RESERVED_COLUMNS)
def test_a_packaged_task_with_a_reserved_column_is_refused(tmp_path, column):
    rows = [{"sentence": f"s{i}", "label": i % 2, column: "x"} for i in range(20)]
    cfg = OmegaConf.merge(
        OmegaConf.load(CONF / "task" / "sst2.yaml"),
        {"files": {"train": str(write_jsonl(tmp_path / "train.jsonl", rows))}, "dev_size": 4},
    )
    with pytest.raises(ValueError, match=rf"train.jsonl: row 1 has a column named '{column}'"):
        load_task(cfg)


def test_a_file_too_small_for_the_carve_names_the_options_to_set(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", qa_rows(12))
    with pytest.raises(ValueError, match=r"12 rows\) must leave.*task.test_size=2 task.dev_size=2"):
        load_task(user_cfg(path, test_size=128, dev_size=64))
    task = load_task(user_cfg(path, test_size=2, dev_size=2))  # the suggested sizes load
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [8, 2, 2]


received_kwargs: list[dict] = []


def record_kwargs(prompts, completions, **kwargs):
    received_kwargs.append({"prompts": prompts, "completions": completions, **kwargs})
    return [0.0] * len(completions)


record_kwargs.needs = ("generation", "loglikelihood", "label_loglikelihoods")  # every column the scorer can add


def test_reward_functions_get_every_column_and_the_reserved_arguments(tmp_path):
    """A user file with every optional column scores: the reward function sees the data columns (TRL's
    convention) and exactly the reserved names beside them, so no column can shadow one."""
    rows = [{**r, "template": "{instruction}\n{input}", "source": "quiz"} for r in cls_rows()]
    task = load_task(user_cfg(write_jsonl(tmp_path / "rows.jsonl", rows)))
    scorer = RewriteScorer(task, FakeBackend(), [f"{__name__}.record_kwargs"], [1.0])
    received_kwargs.clear()
    scorer(["Answer.", "Reply."], task.splits["train"][:3])
    (kwargs,) = received_kwargs
    assert set(kwargs) == {"input", "output", "source", *RESERVED_COLUMNS}
    assert [len(lls) for lls in kwargs["label_loglikelihoods"]] == [2] * 6  # both labels, every example
    assert kwargs["source"] == ["quiz"] * 6 and kwargs["rewrite"] == ["Answer."] * 3 + ["Reply."] * 3
    assert kwargs["task"] is task
