"""GRPO math against values worked by hand."""

import math

import pytest
import torch

from prewrite.algorithms.grpo import group_advantages, grpo_loss, nanstd
from prewrite.algorithms.logprobs import completion_logprobs


def test_group_advantages_normalise_inside_each_group():
    # Group 1: [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3). Group 2: all equal -> advantage 0.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    adv = group_advantages(rewards, num_generations=4, scale_rewards="group")
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv.tolist() == pytest.approx([a, -a, -a, a, 0, 0, 0, 0], abs=1e-6)


def test_group_advantages_scale_none_and_batch():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    assert group_advantages(rewards, 2, "none").tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    # batch std of [1, 0, .5, .5]: mean .5, unbiased var (.25 + .25) / 3
    s = math.sqrt(0.5 / 3) + 1e-4
    assert group_advantages(rewards, 2, "batch").tolist() == pytest.approx([0.5 / s, -0.5 / s, 0, 0], abs=1e-6)


def test_unscorable_reward_is_left_out_of_the_group_and_gets_zero_advantage():
    # NaN = reward None. Valid [1, 0, .5]: mean .5, unbiased std .5.
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.5])
    adv = group_advantages(rewards, 4, "group")
    assert adv.tolist() == pytest.approx([0.5 / 0.5001, 0.0, -0.5 / 0.5001, 0.0], abs=1e-6)
    # A group with one scorable member carries no signal.
    assert group_advantages(torch.tensor([1.0, float("nan")]), 2).tolist() == [0.0, 0.0]


def test_group_advantages_rejects_unknown_scaling():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, "std")


def test_nanstd_matches_torch_std_without_nans():
    x = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(nanstd(x, dim=1), x.std(dim=1))


# Two completions: advantages +1 and -1; the first has two valid tokens, the second one.
ADV = torch.tensor([1.0, -1.0])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        ("grpo", 0.0),  # per-sequence means: -1 and +1, averaged
        ("bnpo", -1 / 3),  # token mean over the batch: (-1 - 1 + 1) / 3
        ("dapo", -1 / 3),  # same as bnpo for a single minibatch
        ("dr_grpo", -1 / 6),  # sum / (B * max_completion_length) = -1 / (2 * 3)
    ],
)
def test_loss_types_at_ratio_one(loss_type, expected):
    logps = torch.zeros(2, 3)
    loss, _ = grpo_loss(logps, logps, ADV, MASK, loss_type=loss_type, max_completion_length=3)
    assert loss.item() == pytest.approx(expected)


def test_dapo_normalises_by_the_whole_generation_batch():
    logps = torch.zeros(2, 3)
    loss, _ = grpo_loss(logps, logps, ADV, MASK, loss_type="dapo", num_items_in_batch=6)
    assert loss.item() == pytest.approx(-1 / 6)


def test_clipping_is_pessimistic_and_counted():
    # ratio 1.5 on every token; epsilon 0.2 -> clip at 1.2.
    logps = torch.full((2, 1), math.log(1.5))
    old = torch.zeros(2, 1)
    mask = torch.ones(2, 1)
    loss, stats = grpo_loss(logps, old, ADV, mask, loss_type="bnpo", epsilon=0.2)
    # A=+1: -min(1.5, 1.2) = -1.2 (clipped); A=-1: -min(-1.5, -1.2) = 1.5 (not clipped).
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clip_ratio/high"].item() == pytest.approx(0.5)
    assert stats["clip_ratio/low"].item() == 0.0
    # epsilon_high widens only the upper bound: 1.5 is inside 1 + 0.6.
    loss, stats = grpo_loss(logps, old, ADV, mask, loss_type="bnpo", epsilon=0.2, epsilon_high=0.6)
    assert loss.item() == pytest.approx((-1.5 + 1.5) / 2)
    assert stats["clip_ratio/region"].item() == 0.0


def test_kl_term_is_k3_estimator_weighted_by_beta():
    logps = torch.zeros(1, 2)
    ref = torch.full((1, 2), math.log(2.0))  # exp(log 2) - log 2 - 1
    kl = 2 - math.log(2) - 1
    loss, stats = grpo_loss(logps, logps, torch.zeros(1), torch.ones(1, 2), loss_type="grpo", beta=0.1, ref_logps=ref)
    assert stats["kl"].item() == pytest.approx(kl)
    assert loss.item() == pytest.approx(0.1 * kl)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, logps, torch.zeros(1), torch.ones(1, 2), beta=0.1)


def test_policy_gradient_direction():
    # At ratio 1 the gradient of the grpo loss w.r.t. a token's log-prob is -A / (n_tokens(seq) * B).
    logps = torch.zeros(2, 3, requires_grad=True)
    loss, _ = grpo_loss(logps, logps.detach(), ADV, MASK, loss_type="grpo")
    loss.backward()
    expected = torch.tensor([[-0.25, -0.25, 0.0], [0.5, 0.0, 0.0]])
    assert torch.allclose(logps.grad, expected)


def test_masked_tokens_do_not_matter():
    logps = torch.zeros(2, 3)
    noisy = logps.clone()
    noisy[0, 2] = 5.0
    noisy[1, 1:] = -7.0
    for lt in ("grpo", "bnpo", "dapo", "dr_grpo"):
        a, _ = grpo_loss(logps, torch.zeros(2, 3), ADV, MASK, loss_type=lt, max_completion_length=3)
        b, _ = grpo_loss(noisy, torch.zeros(2, 3), ADV, MASK, loss_type=lt, max_completion_length=3)
        assert a.item() == pytest.approx(b.item())


class FixedLogits(torch.nn.Module):
    """A causal LM stand-in whose logits are a fixed table: enough to check the indexing."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask, logits_to_keep):
        # as transformers reads it: an int keeps the last that many positions, a tensor indexes them
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return type("Out", (), {"logits": self.logits[:, keep]})()


def test_completion_logprobs_pick_the_next_token_under_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    got = completion_logprobs(FixedLogits(logits), ids, torch.ones_like(ids), num_completion_tokens=2, temperature=2.0)
    # completion tokens are positions 3 and 4, predicted by positions 2 and 3
    want = torch.stack(
        [torch.log_softmax(logits[:, t - 1] / 2.0, -1).gather(1, ids[:, t : t + 1]).squeeze(1) for t in (3, 4)], 1
    )
    assert torch.allclose(got, want, atol=1e-6)


def test_rows_sharing_a_prompt_get_the_log_probs_and_gradients_of_one_pass_over_each_row(tiny_llama):
    """completion_logprobs runs each distinct prompt once (a GRPO group's rows share theirs): its log-probs
    and gradients equal those of one pass over every whole row, for left-padded prompts of two lengths."""
    from transformers import AutoModelForCausalLM

    from prewrite.algorithms import logprobs as lp

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).train()
    vocab = model.config.vocab_size
    long, short = torch.randint(3, vocab, (7,)), torch.randint(3, vocab, (4,))
    short_row = torch.cat([torch.zeros(3, dtype=torch.long), short])  # left-padded to the long prompt
    prompt_ids = torch.stack([long, long, long, short_row, short_row])
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[3:, :3] = 0
    completion_ids = torch.randint(3, vocab, (5, 6))
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 4:] = 0  # a row that ended early
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    weights = torch.randn(5, 6)

    def run(shared: bool):
        model.zero_grad()
        if shared:
            logps = lp.completion_logprobs(model, ids, mask, 6, temperature=0.7)
        else:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=7).logits[:, :-1]
            logps = lp._token_logprobs(logits, ids, 6, 0.7)
        (logps * weights * completion_mask).sum().backward()
        return logps.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    calls = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    shared_logps, shared_grad = run(shared=True)
    hook.remove()
    assert calls == [torch.Size([2, 7]), torch.Size([5, 6])]  # the two prompts once, then the completions
    full_logps, full_grad = run(shared=False)
    torch.testing.assert_close(shared_logps, full_logps, atol=1e-5, rtol=0)
    assert ((shared_grad - full_grad).norm() / full_grad.norm()) < 1e-5


def test_rows_sharing_a_prompt_get_the_same_gradients_every_time(tiny_llama):
    """The shared prompt's logits and keys go to their rows by index_select, whose backward adds serially:
    indexing with repeated rows backpropagates through a parallel atomic add on a CPU with several threads,
    and runs of one command then trained differently from their first update (every weight)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).train()
    ids = torch.cat([torch.randint(3, 1000, (1, 20)).repeat(8, 1), torch.randint(3, 1000, (8, 10))], 1)
    mask = torch.ones_like(ids)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))  # the atomic add runs in parallel only with more than one thread
    try:
        grads = []
        for _ in range(3):
            model.zero_grad()
            completion_logprobs(model, ids, mask, 10).sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])
