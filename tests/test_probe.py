"""prewrite.probe: candidates scored on dev only, sorted, with their spread; bad options stop before any
model loads. The unit tests script the task LLM and the rewriter; the integration test runs the
embedded model on a few rows."""

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from prewrite import probe as probe_mod
from prewrite.backends.base import TaskBackend
from tests.conftest import ROOT
from tests.fake_backend import spy_on_backends


class LabelSayer(TaskBackend):
    """A task LLM that says "positive" when the prompt asks it to, "negative" when told so, else
    nothing useful: accuracy is then the share of dev rows with that gold label, or 0."""

    def __init__(self, **_):
        super().__init__()
        self.prompts: list[str] = []

    def generate(self, prompts):
        self.prompts += prompts
        return ["positive" if "say positive" in p else "negative" if "say negative" in p else "hmm" for p in prompts]

    def cache_identity(self):
        return {"backend": "label sayer"}


class ScriptedRewriter:
    def __init__(self, samples):
        self.samples, self.calls = samples, []

    def rewrite(self, instruction, meta_prompt, num, temperature, max_new_tokens):
        self.calls.append((instruction, meta_prompt, num, temperature, max_new_tokens))
        return self.samples[:num]


@pytest.fixture
def scripted(monkeypatch):
    """The task LLM and the untrained rewriter replaced by scripts; returns (task LLM, rewriter, loads)."""
    llm, rewriter, loads = LabelSayer(), ScriptedRewriter(["say negative now", "Classify the sentiment.", "x"]), []
    monkeypatch.setattr(probe_mod, "build_backend", lambda *a: llm)
    monkeypatch.setattr(probe_mod.rewriter_model, "load_untrained", lambda *a: loads.append(a) or rewriter)
    return llm, rewriter, loads


def test_candidates_are_ranked_on_dev_with_spread_and_never_see_test(compose_config, scripted, tmp_path):
    llm, rewriter, loads = scripted
    (tmp_path / "mine.txt").write_text("say positive please\n\n  say positive please  \nbland\n")
    cfg = compose_config(
        "probe", "task=sst2_sentences", "num_samples=3", "dev_examples=20", "logger=none",
        "instructions=[say negative now, another one]", f"instructions_file={tmp_path / 'mine.txt'}",
    )  # fmt: skip
    result = probe_mod.probe(cfg)

    task = probe_mod.load_task(cfg.task)
    dev = task.eval_rows("dev", 20, cfg.seed)
    share = {g: sum(task.gold(r) == g for r in dev) / 20 for g in (0, 1)}
    rows = result["rows"]
    # distinct candidates, best first; a sample equal to another candidate is scored once, sources merged
    labelled = sorted(
        [("say positive please", "user", share[1]), ("say negative now", "user+rewriter", share[0])],
        key=lambda c: -c[2],
    )
    rest = [("Classify the sentiment.", "initial+rewriter", 0.0), ("another one", "user", 0.0)]
    rest += [("bland", "user", 0.0), ("x", "rewriter", 0.0)]  # ties keep the order they were given in
    assert [(r["instruction"], r["source"], r["dev_accuracy"]) for r in rows] == labelled + rest
    best = max(share.values())
    assert rows[0]["vs_initial"] == best and [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6]
    s = result["summary"]
    assert (s["best"], s["worst"], s["spread"], s["initial"]) == (best, 0.0, best, 0.0)
    assert (s["beat_initial"], s["others"], s["candidates"], s["dev_rows"]) == (2, 5, 6, 20)
    assert s["task_llm_requests"] == 6 * 20 == len(llm.prompts)  # one pass, each distinct candidate once

    # the untrained rewriter rewrote the initial instruction with training's meta prompt
    assert loads == [(cfg.rewriter.model_name_or_path, "float32", cfg.rewriter.chat_template, "auto")]
    assert rewriter.calls == [("Classify the sentiment.", cfg.meta_prompt, 3, 1.0, cfg.max_new_tokens)]
    # every prompt holds a dev sentence of the seeded subset; none a test sentence
    dev_sentences = {r["sentence"] for r in dev}
    assert {p.split("Sentence: ")[1].split("\nAnswer:")[0] for p in llm.prompts} == dev_sentences
    assert json.loads((tmp_path / "probe.json").read_text()) == json.loads(json.dumps(result))


def test_no_samples_means_no_rewriter_and_the_initial_alone_has_no_spread(compose_config, scripted):
    _, _, loads = scripted
    result = probe_mod.probe(compose_config("probe", "num_samples=0", "dev_examples=4", "logger=none"))
    assert loads == [] and [r["source"] for r in result["rows"]] == ["initial"]
    assert result["summary"]["spread"] == 0.0 and result["summary"]["beat_initial"] == 0


def test_logs_a_probe_run_to_mlflow(compose_config, scripted, tmp_path):
    cfg = compose_config("probe", "num_samples=2", "dev_examples=8", f"paths.outputs_dir={tmp_path}")
    result = probe_mod.probe(cfg)
    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    run = client.get_run(result["summary"]["run_id"])
    assert run.data.tags["mlflow.runName"] == "probe-sst2_sentences" and run.info.status == "FINISHED"
    assert run.data.params["num_samples"] == "2" and run.data.params["task.name"] == "sst2_sentences"
    # the second sample repeats the initial instruction: 2 distinct candidates on 8 rows
    assert run.data.metrics["probe/candidates"] == 2 and run.data.metrics["probe/task_llm_requests"] == 16
    assert run.data.metrics["probe/dev_accuracy_spread"] == result["summary"]["spread"]
    assert {"probe.json", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_samples=-1", "num_samples must be a non-negative integer, got -1"),
        ("dev_examples=0", "dev_examples must be a positive integer or null, got 0"),
        ("instructions=hello", "instructions must be a list"),
        ("instructions=['ok', '  ']", "instructions[1] must be a non-empty string"),
        ("instructions_file=/nonexistent/list.txt", "instructions_file=/nonexistent/list.txt: no such file"),
        ("sample_temperature=0", "sample_temperature must be a number > 0"),
        ("task.files.test=nope.jsonl", "task=sst2_sentences: Task data file not found"),
    ],
)
def test_bad_options_fail_before_any_model_loads(compose_config, scripted, override, message):
    _, _, loads = scripted
    cfg = compose_config("probe", "logger=none", override)
    with pytest.raises(probe_mod.ProbeOptionError) as e:
        probe_mod.probe(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert loads == []


def test_the_command_prints_a_bad_option_as_one_line(tmp_path):
    cmd = [sys.executable, "-m", "prewrite.probe", "num_samples=-2", "logger=none", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "prewrite.probe: num_samples must be a non-negative integer, got -2"
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_probe_on_the_embedded_model_reads_dev_only(compose_config, monkeypatch, tmp_path):
    spies = spy_on_backends(monkeypatch, probe_mod)
    cfg = compose_config(
        "probe", "task=sst2_sentences", "num_samples=2", "dev_examples=4", "max_new_tokens=16",
        "instructions=['Is this review positive or negative?']", f"paths.outputs_dir={tmp_path}",
    )  # fmt: skip
    result = probe_mod.probe(cfg)
    rows, s = result["rows"], result["summary"]
    assert 3 <= s["candidates"] <= 4 and len(rows) == s["candidates"]
    assert [r["dev_accuracy"] for r in rows] == sorted((r["dev_accuracy"] for r in rows), reverse=True)
    assert all(0.0 <= r["dev_accuracy"] <= 1.0 for r in rows)
    task = probe_mod.load_task(cfg.task)
    dev = {r["sentence"] for r in task.eval_rows("dev", 4, cfg.seed)}
    test = {r["sentence"] for r in task.splits["test"]}
    asked = {p.split("Sentence: ")[-1].split("\nAnswer:")[0] for p in spies[0].prompts}
    assert asked == dev and not asked & test
    assert MlflowClient(cfg.paths.mlflow_tracking_uri).get_run(s["run_id"]).info.status == "FINISHED"
