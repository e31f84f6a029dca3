"""Every shipped benchmark loads from its task config: split sizes, disjoint splits, golds that parse,
prompts that hold the input."""

import pytest
from omegaconf import OmegaConf

from prewrite.tasks import load_task
from prewrite.tasks.task import row_key
from tests.conftest import CONF

SIZES = {  # train / dev / test rows after carving (see each conf/task/<name>.yaml)
    "sst2": (4743, 256, 872),
    "ag_news": (1792, 200, 7600),
    "copa": (350, 50, 100),
    "boolq": (48, 16, 3270),
    "cb": (200, 50, 56),
    "nq_open": (1600, 200, 3610),
    "gsm8k": (4744, 256, 1319),
    "math500": (150, 50, 300),
    "aime2024": (400, 100, 30),
    "sst2_sentences": (6909, 872, 1821),
    "trec": (5113, 256, 500),
    "mr": (8406, 256, 2000),
    "cr": (1509, 256, 2000),
    "subj": (7744, 256, 2000),
}
KIND = {"nq_open": "qa", "gsm8k": "math", "math500": "math", "aime2024": "math"}
METRIC = {"classification": "accuracy", "qa": "f1", "math": "math_verify"}


def load(name, **changes):
    cfg = OmegaConf.load(CONF / "task" / f"{name}.yaml")
    return load_task(OmegaConf.merge(cfg, changes))


@pytest.fixture(scope="module", params=sorted(SIZES))
def task(request):
    return load(request.param)


def test_split_sizes(task):
    assert tuple(len(task.splits[s]) for s in ("train", "dev", "test")) == SIZES[task.name]


def test_splits_are_disjoint_by_content(task):
    train, dev, test = ({row_key(task, r) for r in task.splits[s]} for s in ("train", "dev", "test"))
    assert len(train) == len(task.splits["train"])  # no duplicates either
    assert not (train & dev) and not (train & test) and not (dev & test)


def test_kind_metric_and_labels(task):
    assert task.kind == KIND.get(task.name, "classification")
    assert task.metric == METRIC[task.kind]
    assert (task.labels is None) == (task.kind != "classification")


def test_every_gold_parses(task):
    for split, rows in task.splits.items():
        for row in rows:
            gold = task.gold(row)
            if task.kind == "classification":
                assert gold in task.labels, (split, row)
                assert task.parse(task.labels[gold]) == gold  # the verbalizer reads back as the label
            elif task.kind == "qa":
                assert isinstance(gold, list) and gold and all(isinstance(g, str) and g for g in gold)
            else:
                assert isinstance(gold, str) and gold.strip(), (split, row)


def test_prompt_holds_the_instruction_and_the_input(task):
    for split in ("train", "dev", "test"):
        row = task.splits[split][0]
        prompt = task.prompt(task.instruction, row)
        assert prompt.startswith(task.instruction)
        for f in task.input_fields:
            assert str(row[f]) in prompt


def test_test_rows_come_only_from_the_test_file():
    # Benchmarks with no train file: nothing of AIME reaches train/dev, MATH-500 test is what is left.
    aime = load("aime2024")
    assert all("url" in r for r in aime.splits["test"]) and not any("url" in r for r in aime.splits["train"])
    assert not any("url" in r for r in aime.splits["dev"])
    math = load("math500")
    ids = [{r["unique_id"] for r in math.splits[s]} for s in ("train", "dev", "test")]
    assert sum(map(len, ids)) == 500 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    other = load("math500", split_seed=1)
    assert {r["unique_id"] for r in other.splits["test"]} != ids[2]


def test_math_golds_on_real_rows():
    gsm = load("gsm8k")
    first_train = gsm.splits["train"][0]
    assert first_train["question"].startswith("Natalia sold clips") and gsm.gold(first_train) == "72"
    math = load("math500")
    rows = math.splits["train"] + math.splits["dev"] + math.splits["test"]
    polar = next(r for r in rows if r["problem"].startswith("Convert the point $(0,3)$"))
    assert math.gold(polar) == r"\left( 3, \frac{\pi}{2} \right)"
    aime = load("aime2024")
    assert [aime.gold(r) for r in aime.splits["test"]][:8] == ["204", "113", "371", "385", "110", "104", "721", "25"]


def test_parse_by_kind():
    math, qa, copa = load("gsm8k"), load("nq_open"), load("copa")
    assert math.parse(r"so the answer is $\boxed{\frac{1}{2}}$") == r"\frac{1}{2}"
    assert math.parse("She pays 1,234 dollars.") == "1234" and math.parse("no idea") is None
    assert qa.parse("  December 1972.\nBecause ...") == "December 1972" and qa.parse("\n \n") == ""
    assert copa.parse("2. Water flowed from the spout.") == 1 and copa.parse("neither") is None


def test_boolq_and_ag_news_labels_are_the_source_values():
    boolq, ag = load("boolq"), load("ag_news")
    assert boolq.labels == {True: "yes", False: "no"} and boolq.parse("Yes, it is.") is True
    assert ag.labels == {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"}
    assert ag.parse("sci/tech") == 4


def test_sentence_benchmarks_labels_and_official_test_splits():
    sst, trec = load("sst2_sentences"), load("trec")
    assert sst.labels == {0: "negative", 1: "positive"} and sst.parse("It is positive.") == 1
    assert trec.labels == {
        "ABBR": "abbreviation", "DESC": "description", "ENTY": "thing",
        "HUM": "person", "LOC": "location", "NUM": "number",
    }  # fmt: skip
    assert trec.parse("Location, since it asks where") == "LOC" and trec.parse("something") is None
    assert load("subj").parse("This is objective.") == "objective"
    # test is the official file, whole and in order; overlapping inputs left train instead
    assert sst.splits["test"][0]["sentence"].startswith("no movement , no yuks")
    assert trec.splits["test"][0]["question"] == "How far is it from Denver to Aspen ?"


def test_test_overlap_is_refused_unless_dropped_from_train():
    with pytest.raises(ValueError, match=r"row\(s\) appear in both train and test.*drop_test_overlap=true"):
        load("trec", drop_test_overlap=False)
    with pytest.raises(ValueError, match=r"2 row\(s\) appear in both train and test"):
        load("sst2_sentences", drop_test_overlap=False)


def test_carved_test_subsets_are_fixed_by_split_seed():
    mr = load("mr")
    again, other = load("mr"), load("mr", split_seed=1)
    assert again.splits["test"] == mr.splits["test"]
    assert other.splits["test"] != mr.splits["test"] and len(other.splits["test"]) == 2000
    labels = {r["label"] for r in mr.splits["test"]}
    assert labels == {"negative", "positive"}
