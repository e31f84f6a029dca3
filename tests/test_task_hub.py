"""source=hub builds the right datasets.load_dataset calls (offline: load_dataset is faked)."""

import datasets
import pytest
from omegaconf import OmegaConf

from prewrite.tasks import load_task
from tests.conftest import CONF


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        n = 12
        if path == "nyu-mll/glue":
            return [{"sentence": f"{split} sentence {i}", "label": i % 2, "idx": i} for i in range(n)]
        if path == "SetFit/sst2":
            return [{"text": f"{split} text {i}", "label": i % 2, "label_text": "?"} for i in range(n)]
        if path == "fancyzhx/ag_news":
            return [{"text": f"{split} news {i}", "label": i % 4} for i in range(n)]
        if path == "aps/super_glue":
            return [{"question": f"{split} q{i}", "passage": f"p{i}", "idx": i, "label": i % 2} for i in range(n)]
        if path == "HuggingFaceH4/MATH-500":
            return [{"problem": f"problem {i}", "solution": rf"\boxed{{{i}}}", "answer": str(i)} for i in range(n)]
        if path == "Maxwell-Jia/AIME_2024":
            return [{"ID": f"2024-I-{i}", "Problem": f"aime {i}", "Solution": "...", "Answer": i} for i in range(n)]
        raise AssertionError(f"unexpected dataset {path}")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def hub_task(name, **changes):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "task" / f"{name}.yaml"), {"source": "hub", "dev_size": 2}, changes)
    return load_task(cfg)


def test_sst2_from_the_hub(fake_hub):
    task = hub_task("sst2")
    assert fake_hub == [("nyu-mll/glue", "sst2", "train"), ("nyu-mll/glue", "sst2", "validation")]
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [10, 2, 12]
    assert task.splits["test"][0]["sentence"] == "validation sentence 0"


def test_sentence_level_sst2_from_the_hub_renames_text_and_keeps_its_dev(fake_hub):
    task = hub_task("sst2_sentences")
    assert fake_hub == [("SetFit/sst2", None, split) for split in ("train", "validation", "test")]
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [12, 12, 12]  # nothing carved
    assert task.splits["dev"][1] == {"sentence": "validation text 1", "label": 1, "label_text": "?"}


def test_hub_overrides_fields_and_labels(fake_hub):
    ag = hub_task("ag_news")
    assert fake_hub == [("fancyzhx/ag_news", None, "train"), ("fancyzhx/ag_news", None, "test")]
    assert ag.input_fields == ["text"] and ag.answer_field == "label" and ag.labels[3] == "Sci/Tech"
    assert "test news 0" in ag.prompt(ag.instruction, ag.splits["test"][0])
    boolq = hub_task("boolq")
    assert fake_hub[-2:] == [("aps/super_glue", "boolq", "train"), ("aps/super_glue", "boolq", "validation")]
    assert boolq.labels == {0: "no", 1: "yes"}


def test_aime_from_the_hub_takes_train_from_another_dataset(fake_hub):
    task = hub_task("aime2024")
    assert fake_hub == [("HuggingFaceH4/MATH-500", None, "test"), ("Maxwell-Jia/AIME_2024", None, "train")]
    assert task.splits["test"][3]["problem"] == "aime 3" and task.gold(task.splits["test"][3]) == "3"
    assert len(task.splits["train"]) == 10 and len(task.splits["dev"]) == 2


def test_math500_from_the_hub_is_carved_three_ways(fake_hub):
    task = hub_task("math500", train_size=5)
    assert fake_hub == [("HuggingFaceH4/MATH-500", None, "test")]
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [5, 2, 5]


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match=r"task 'gsm8k': unknown source 'hf'; expected one of"):
        load_task(OmegaConf.merge(OmegaConf.load(CONF / "task" / "gsm8k.yaml"), {"source": "hf"}))
