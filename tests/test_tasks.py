"""Task loading: splits kept apart, parsing, and clear errors on bad data."""

import json

import pytest
from omegaconf import OmegaConf

from prewrite.tasks import load_task
from tests.conftest import CONF


def sst2_cfg(**changes):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "task" / "sst2.yaml"))
    cfg.update(changes)
    return cfg


def key(row):
    return json.dumps(row, sort_keys=True)


def test_sst2_splits_are_disjoint_seeded_and_complete():
    task = load_task(sst2_cfg())
    sizes = {s: len(rows) for s, rows in task.splits.items()}
    assert sizes == {"train": 5000 - 256, "dev": 256, "test": 872}
    train, dev, test = ({key(r) for r in task.splits[s]} for s in ("train", "dev", "test"))
    assert not (train & dev) and not (train & test) and not (dev & test)
    again = load_task(sst2_cfg())
    assert again.splits["dev"] == task.splits["dev"]
    other = load_task(sst2_cfg(split_seed=1))
    assert other.splits["dev"] != task.splits["dev"]


def test_step_samples_are_reproducible_and_differ_between_steps():
    task = load_task(sst2_cfg())
    a = task.sample("train", 8, seed=[0, 3])
    assert a == task.sample("train", 8, seed=[0, 3])
    assert a != task.sample("train", 8, seed=[0, 4])
    assert len({key(r) for r in a}) == 8
    assert task.sample("dev", None, seed=[0]) == task.splits["dev"]


def test_prompt_and_parse():
    task = load_task(sst2_cfg())
    row = task.splits["test"][0]
    prompt = task.prompt("Be brief.", row)
    assert prompt.startswith("Be brief.\n\nSentence: ") and row["sentence"] in prompt and prompt.endswith("Answer:")
    assert task.parse("Positive.") == 1
    assert task.parse("The sentiment is negative, not positive") == 0  # first label mentioned wins
    assert task.parse("nonnegative") is None  # whole words only
    assert task.parse("I cannot tell") is None


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"sentence": "a", "label": 1}\n{"sentence": "b", "label": \n')
    with pytest.raises(ValueError, match=rf"{bad}:2: malformed JSON"):
        load_task(sst2_cfg(files={"train": str(bad), "test": str(bad)}))


def test_missing_field_names_field_task_and_file(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"sentence": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    with pytest.raises(ValueError, match=rf"{bad}: row 2 has no field 'sentence' required by task 'sst2'"):
        load_task(sst2_cfg(files={"train": str(bad), "test": str(bad)}))


def test_label_outside_label_set_is_named(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 7}\n')
    with pytest.raises(ValueError, match=r"row 2: label 7 is not in the label set of task 'sst2'"):
        load_task(sst2_cfg(files={"train": str(bad), "test": str(bad)}))


def test_template_must_use_the_instruction_and_every_input_field():
    with pytest.raises(ValueError, match="template placeholders"):
        load_task(sst2_cfg(template="{instruction}: {text}"))


def test_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_task(sst2_cfg(files={"train": "sst2/nope.jsonl", "test": "sst2/dev.jsonl"}))
