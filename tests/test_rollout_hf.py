import torch
from transformers import AutoModelForCausalLM

from prewrite import model_zoo
from prewrite.rollout.hf_rollout import HFRollout


def test_a_groups_prompt_runs_once_and_the_samples_are_generates_own(tiny_llama):
    """With rollout.decoding=generate, HFRollout runs each prompt once for its group of G samples (generate
    alone would run it G times); on the same seed it samples what `generate(num_return_sequences=G)` samples,
    for left-padded prompts of two lengths."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tokenizer = model_zoo.load_tokenizer(str(tiny_llama))
    vocab = model.config.vocab_size
    torch.manual_seed(0)
    prompts = [torch.randint(3, vocab, (9,)).tolist(), torch.randint(3, vocab, (5,)).tolist()]

    widths = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    torch.manual_seed(1)
    rollout = HFRollout(model, tokenizer, decoding="generate").generate(prompts, num_generations=4, max_new_tokens=6)
    hook.remove()
    # the two prompts but their last tokens once, then the last tokens of the 8 rows, then one token a step
    assert widths[:2] == [(2, 8), (8, 1)] and set(widths[2:]) == {(8, 1)}

    torch.manual_seed(1)
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    plain = model.generate(
        **batch, do_sample=True, num_return_sequences=4, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
        temperature=1.0, top_p=1.0, top_k=None,
    )  # fmt: skip
    torch.testing.assert_close(rollout.completion_ids, plain[:, batch["input_ids"].shape[1] :], rtol=0, atol=0)
    torch.testing.assert_close(rollout.prompt_ids, batch["input_ids"].repeat_interleave(4, 0), rtol=0, atol=0)
