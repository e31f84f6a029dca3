"""A user's own file in each documented format and kind trains through the CLI, with every optional
column present (`task`, `template`): the format README documents for task=jsonl. The JSONL one is also
evaluated (the other formats load through the same rows, so their evaluation adds time, not coverage)."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT, TINY_TRAINING

pytestmark = pytest.mark.integration

WORDS = ["good", "great", "fine", "bad", "awful", "poor"]


def rows(kind: str) -> list[dict]:
    template = "{instruction}\n\nInput: {input}\nAnswer:"
    if kind == "classification":
        made = [
            {"instruction": "Classify the sentiment.", "input": f"The film was {w} (review {i}).",
             "output": "positive" if w in WORDS[:3] else "negative"}
            for i in range(8) for w in WORDS
        ]  # fmt: skip
    elif kind == "qa":
        made = [
            {"instruction": "Answer the question.", "input": f"What comes after {i}?", "output": str(i + 1)}
            for i in range(40)
        ]
    else:
        made = [
            {"instruction": "Solve the problem.", "input": f"What is {i} + {i + 2}?", "output": str(2 * i + 2)}
            for i in range(40)
        ]
    return [{**r, "task": kind, "template": template} for r in made]


def write(path, table: list[dict]):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in table))
    elif path.suffix == ".csv":
        pd.DataFrame(table).to_csv(path, index=False)
    else:
        pd.DataFrame(table).to_parquet(path)
    return path


@pytest.mark.parametrize(
    ("kind", "suffix", "metric"),
    [("qa", ".jsonl", "f1"), ("classification", ".csv", "accuracy"), ("math", ".parquet", "math_verify")],
)
def test_a_user_file_trains_and_evaluates(tmp_path, kind, suffix, metric, tiny_models):
    # JSONL trains as a user's run would, on the embedded model; the other formats differ only in how
    # their rows load, so they train the tiny random Llama
    models = [] if suffix == ".jsonl" else tiny_models
    path = write(tmp_path / f"rows{suffix}", rows(kind))
    task = [
        "task=jsonl", f"task.path={path}", "task.dev_size=4", "task.test_size=4",
        f"task.metric={metric}", "task.max_new_tokens=12", f"paths.outputs_dir={tmp_path / 'outputs'}",
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "prewrite.train", *task, *TINY_TRAINING, *models, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-4000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "rewrites.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # both training steps were scored
    if suffix != ".jsonl":
        return

    evaluate = subprocess.run(
        [sys.executable, "-m", "prewrite.evaluate", *task, f"rewriter_path={run_dir}", "num_samples=2",
         "max_new_tokens=8", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-4000:]
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    by_method = {r["method"]: r for r in report["results"]}
    assert set(by_method) == {"initial", "prewrite_i", "prewrite_s", "prewrite_s_or_initial"}
    assert all(0.0 <= r[f"test_{metric}"] <= 1.0 for r in by_method.values())
