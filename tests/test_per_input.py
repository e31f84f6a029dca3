"""rewrite_mode=input: a rewrite per input, grouped per input, each scored on its own input; and
evaluating such a rewriter (and a transferred one) with prewrite.evaluate."""

import json

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from prewrite.backends.base import TaskBackend
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task
from tests.conftest import CONF, TINY_TRAINING


class SaysWhatItIsTold(TaskBackend):
    """Answers "positive" when the prompt's instruction says so, else "negative"."""

    def generate(self, prompts):
        self.usage.add(calls=len(prompts))
        return ["positive" if p.startswith("Say positive") else "negative" for p in prompts]

    def cache_identity(self):
        return {}


@pytest.fixture(scope="module")
def sst2():
    return load_task(OmegaConf.load(CONF / "task" / "sst2_sentences.yaml"))


def test_groups_score_each_instruction_on_its_own_row(sst2):
    pos = next(r for r in sst2.splits["dev"] if r["label"] == 1)
    neg = next(r for r in sst2.splits["dev"] if r["label"] == 0)
    scorer = RewriteScorer(sst2, SaysWhatItIsTold(), ["accuracy"], None)
    # per-input training: a group of one pair per rewrite
    scores = scorer.score_groups([[("Say positive.", pos)], [("Say negative.", pos)], [("Say negative.", neg)]])
    assert scores.rewards == [1.0, 0.0, 1.0] and scores.reward_se == [None] * 3  # one example: no spread to measure
    # dev: every row's own rewrite, one sample; the task-level call is the same as its product of pairs
    assert scorer.score_groups([[("Say positive.", pos), ("Say positive.", neg)]]).rewards == [0.5]
    assert scorer(["Say positive.", "Say negative."], [pos, neg]).rewards == [0.5, 0.5]
    assert scorer.requests == 3 + 2 + 4


def test_the_rewriter_sees_the_input_beside_the_instruction(compose_train, sst2):
    from prewrite.lightning_module import Member, PRewriteModule

    cfg = compose_train("rewrite_mode=input")
    module = PRewriteModule.from_config(cfg, [Member(sst2, None, sst2.instruction, [])], steps=1)
    rows = sst2.splits["train"][:2]
    prompts, cut = module.rewriter_prompts(module.members[0], rows)
    texts = [module.tokenizer.decode(p) for p in prompts]
    assert cut == 0 and len(texts) == 2
    for text, row in zip(texts, rows, strict=True):
        assert f"Instruction: {sst2.instruction}" in text and f"Input: {row['sentence']}" in text


@pytest.mark.integration
def test_per_input_training_groups_rewrites_by_input_and_evaluates_every_test_input(
    compose_config, tmp_path, tiny_llama, tiny_models
):
    from prewrite.evaluate import evaluate
    from prewrite.training import train

    outputs = [f"paths.outputs_dir={tmp_path}", "system_metrics_interval_s=null", *tiny_models]
    train(compose_config("train", *TINY_TRAINING, "rewrite_mode=input", f"paths.run_dir={tmp_path}/run", *outputs))
    rows = [json.loads(line) for line in (tmp_path / "run" / "rewrites.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 2 * 2 * 2  # steps x examples_per_step x num_generations
    inputs = [r["input"] for r in train_rows]
    assert inputs[0] == inputs[1] and inputs[2] == inputs[3] and inputs[0] != inputs[2]  # a group per input
    info = json.loads((tmp_path / "run" / "rewriter" / "prewrite.json").read_text())
    assert info["rewrite_mode"] == "input" and "{input}" in info["meta_prompt"] and info["rewrite"] is None

    # evaluated on a task it was not trained on: a transfer, every test input rewritten for itself
    cfg = compose_config(
        "evaluate", f"rewriter_path={tmp_path}/run", "task=cr", "dev_examples=4", "test_examples=6",
        "max_new_tokens=8", f"paths.outputs_dir={tmp_path}", f"task_backend.model_name_or_path={tiny_llama}",
    )  # fmt: skip
    results = evaluate(cfg)
    report = json.loads((tmp_path / "evaluation.json").read_text())
    by_method = {r["method"]: r for r in report["results"]}
    assert set(by_method) == {"initial", "prewrite_i", "prewrite_i_or_initial"}  # no PRewrite-S per input
    assert by_method["prewrite_i"]["instruction"].startswith("(a rewrite per input")
    assert len(report["candidates"]) == 4 and all(c["input"] for c in report["candidates"])  # the dev rewrites
    assert results["cost/prewrite_i/rewriter_calls_per_test_example"] == 1.0
    assert results["cost/prewrite_i/optimization_task_llm_requests"] == 0.0
    assert results["cost/prewrite_i/task_llm_calls_per_test_example"] == 1.0
    client = MlflowClient(cfg.paths.mlflow_tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("prewrite-cr").experiment_id])
    assert run.data.tags["prewrite.transfer"] == "true" and run.data.tags["prewrite.trained_on"] == "sst2_sentences"
    # the rewriter's mode and meta prompt, not the training defaults evaluate's config inherits
    assert run.data.params["rewrite_mode"] == "input" and run.data.params["input_meta_prompt"] == info["meta_prompt"]
    assert "meta_prompt" not in run.data.params and "algorithm.learning_rate" not in run.data.params
    assert run.data.metrics["test/prewrite_i/accuracy"] == by_method["prewrite_i"]["test_accuracy"]


def test_rewrite_each_samples_a_group_per_input_in_input_order():
    from prewrite import rewriter_model

    rw = rewriter_model.load_untrained("embedded:smollm2-135m-instruct")
    meta = "Rewrite: {instruction}\nInput: {input}"
    inputs = ["a fine film", "dull and long", "the plot"]
    greedy = [rw.rewrite_each("Classify.", meta, [x], max_new_tokens=8)[0] for x in inputs]
    assert len(set(greedy)) == 3  # different inputs, different rewrites: the order below is observable
    assert rw.rewrite_each("Classify.", meta, inputs, max_new_tokens=8, batch_size=2) == greedy
    # near-zero temperature: every sample is its input's greedy rewrite, num of them in a row per input
    sampled = rw.rewrite_each("Classify.", meta, inputs, max_new_tokens=8, batch_size=2, num=2, temperature=1e-4)
    assert sampled == [g for g in greedy for _ in range(2)]
    assert rw.usage.calls == 3 + 3 + 6
