"""The decoding loop (prewrite.rollout.decoding_loop) against transformers: the same greedy tokens, draws from
the model's own distribution, and generate for every policy it does not cover."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from prewrite import chat, model_zoo, rewriter_model
from prewrite.config_check import ConfigError, check_training
from prewrite.rollout import decoding_loop
from prewrite.rollout.base import rewriter_prompt
from prewrite.rollout.hf_rollout import HFRollout

EMBEDDED = "embedded:smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedded():
    return model_zoo.load_model(EMBEDDED, "float32").eval(), model_zoo.load_tokenizer(EMBEDDED)


def padded_prompts(tokenizer):
    """The default meta prompt around three instructions of different lengths, left-padded as a rollout pads
    them."""
    meta = OmegaConf.load(ROOT / "conf" / "train.yaml").meta_prompt
    instructions = [
        "Classify the sentiment.",
        "Solve the math word problem and give the final number.",
        "Label the news article with its topic: world, sports, business or science and technology.",
    ]
    prompts = [rewriter_prompt(tokenizer, meta, i)[0] for i in instructions]
    return tokenizer.pad({"input_ids": prompts}, return_tensors="pt"), prompts


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])  # MKL's packed weights, and F.linear
def test_greedy_rewrites_are_generates_on_left_padded_prompts(embedded, vendor, monkeypatch):
    """Greedy decoding by the loop gives generate's tokens, on the embedded model, for three prompts of
    different lengths (left padding, each row's rotary positions its own) in groups of two, with the weights
    read as on either vendor's CPU."""
    monkeypatch.setattr(decoding_loop, "cpu_vendor", lambda: vendor)
    policy, tokenizer = embedded
    batch, prompts = padded_prompts(tokenizer)
    want = HFRollout(policy, tokenizer, decoding="generate").generate(prompts, 2, 40, do_sample=False)
    engine = HFRollout(policy, tokenizer)
    assert engine.loop
    got = engine.generate(prompts, 2, 40, do_sample=False)
    torch.testing.assert_close(got.completion_ids, want.completion_ids, rtol=0, atol=0)
    torch.testing.assert_close(got.completion_mask, want.completion_mask, rtol=0, atol=0)
    assert got.texts == want.texts and len(set(got.texts[::2])) == 3


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_each_sampled_token_is_a_draw_from_the_models_own_distribution(embedded, temperature, top_p):
    """The loop's sampled tokens, teacher-forced through the model's own forward, are the inverse-CDF draws
    of transformers' distribution (temperature, then top-p by transformers' warper) at the uniform numbers
    the loop drew: one per row per step, in the order the loop draws them."""
    policy, tokenizer = embedded
    batch, _ = padded_prompts(tokenizer)
    torch.manual_seed(3)
    out = decoding_loop.decode(policy, batch["input_ids"], batch["attention_mask"], 2, 24,
                               tokenizer.pad_token_id, temperature, top_p)  # fmt: skip
    torch.manual_seed(3)
    uniforms = torch.stack([torch.rand(out.size(0), 1) for _ in range(out.size(1))])  # a [rows, 1] a step

    ids = torch.cat([batch["input_ids"].repeat_interleave(2, 0), out], dim=1)
    mask = torch.cat([batch["attention_mask"].repeat_interleave(2, 0), torch.ones_like(out)], dim=1)
    with torch.no_grad():
        logits = policy(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    width, eos = batch["input_ids"].size(1), policy.generation_config.eos_token_id
    ended = torch.zeros(out.size(0), dtype=torch.bool)
    checked = 0
    for t in range(out.size(1)):
        scores = TemperatureLogitsWarper(temperature)(None, logits[:, width + t - 1])
        scores = TopPLogitsWarper(top_p)(None, scores) if top_p < 1 else scores
        cdf = torch.softmax(scores, -1).cumsum(-1)
        want = torch.searchsorted(cdf, uniforms[t] * cdf[:, -1:]).squeeze(1)
        live = ~ended
        assert torch.equal(out[live, t], want[live]), t
        assert (out[ended, t] == tokenizer.pad_token_id).all()
        checked += int(live.sum())
        ended |= out[:, t] == eos
    assert checked > 3 * out.size(0)  # most rows ran for several steps


def test_draws_follow_the_warped_softmax():
    """Over many draws, each token's frequency is its probability under temperature and top-p."""
    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 2
    probs = torch.softmax(TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, logits)), -1)[0]
    draws = decoding_loop._draw(logits.expand(20000, -1), 0.8, True, 0.7)
    freq = torch.bincount(draws, minlength=12).float() / len(draws)
    assert (freq[probs == 0] == 0).all() and (probs > 0).sum() >= 2
    torch.testing.assert_close(freq, probs, rtol=0, atol=0.015)


def test_policies_the_loop_does_not_cover_go_through_generate(embedded, tiny_llama):
    """LoRA adapters, a generation setting the loop does not apply, and rollout.decoding=generate each send
    the rollout through generate, with the reason; the embedded model and the tiny Llama go through the loop."""
    policy, tokenizer = embedded
    tiny = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert decoding_loop.unsupported(policy) is None and decoding_loop.unsupported(tiny) is None
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert "Llama" in decoding_loop.unsupported(model_zoo.add_lora(tiny, lora))
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    plain.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in decoding_loop.unsupported(plain)
    engine = HFRollout(plain, tokenizer)
    assert not engine.loop and "repetition_penalty" in engine.why
    assert not HFRollout(policy, tokenizer, decoding="generate").loop

    # under bf16 autocast (hardware.precision=bf16-mixed) generate decodes: a forward call per token
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    calls = []
    hook = fresh.register_forward_hook(lambda *_: calls.append(1))
    engine = HFRollout(fresh, tokenizer)
    assert engine.loop
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = engine.generate([[5, 6, 7, 8]], 2, 6, do_sample=False)
    assert len(calls) >= out.completion_ids.size(1) > 1
    calls.clear()
    engine.generate([[5, 6, 7, 8]], 2, 6, do_sample=False)
    hook.remove()
    assert len(calls) == 1  # the loop: the prompt through the model's forward, then its own steps


def test_an_unknown_decoding_is_refused_before_any_model_loads(compose_train):
    cfg = compose_train("rollout.decoding=fast")
    with pytest.raises(ConfigError, match=r"rollout.decoding='fast'; expected one of auto, generate"):
        check_training(cfg)


def test_the_tools_rewriter_decodes_as_the_run_config_says(embedded, compose_train):
    """evaluate, compare, search and probe load their rewriter with the config's rollout.decoding (auto where
    the config has none, as with rollout=vllm): with generate, its samples are generate's on the same seed."""
    policy, tokenizer = embedded
    assert rewriter_model.decoding(compose_train("rollout.decoding=generate")) == "generate"
    assert rewriter_model.decoding(compose_train()) == rewriter_model.decoding(compose_train("rollout=vllm")) == "auto"
    message = "Rewrite this instruction: Classify the sentiment."
    rewriter = rewriter_model.Rewriter(policy, tokenizer, {}, ROOT, decoding="generate")
    torch.manual_seed(5)
    got = rewriter.complete(message, num=3, max_new_tokens=12)
    torch.manual_seed(5)
    want = HFRollout(policy, tokenizer, "generate").generate([chat.encode(tokenizer, message)], 3, 12).texts
    assert got == want
