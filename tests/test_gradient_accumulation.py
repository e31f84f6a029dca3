"""`algorithm.gradient_accumulation_steps`: an update split into micro-batches (one forward and backward
each) gives the gradient of the unsplit update, for every GRPO loss type and for PPO. A tiny random
model under the module's real `step_optimizer`; SGD with learning rate 0 leaves the weights alone and
the gradient in place to compare."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from prewrite.algorithms.logprobs import completion_logprobs
from prewrite.algorithms.updates import build_algorithm
from prewrite.lightning_module import PRewriteModule
from prewrite.rollout.base import Rollout

CONF = Path(__file__).resolve().parents[1] / "conf" / "algorithm"
B, P, T, VOCAB = 6, 4, 5, 40


class TinyLearner:
    """What an update uses of PRewriteModule (prewrite.algorithms.base.Learner), with its real step_optimizer."""

    step_optimizer = PRewriteModule.step_optimizer

    def __init__(self, algo: dict):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
        )  # fmt: skip
        self.policy = LlamaForCausalLM(config)
        self.ref_policy = copy.deepcopy(self.policy)
        with torch.no_grad():
            for p in self.ref_policy.parameters():
                p.add_(0.05 * torch.randn_like(p))  # a reference apart from the policy: the KL has a gradient
        self.value_head = torch.nn.Linear(16, 1)
        self.algo = algo
        self.trainer = SimpleNamespace(
            world_size=1,
            strategy=SimpleNamespace(reduce_boolean_decision=lambda d, all: d, reduce=lambda t, reduce_op: t),
        )
        self.global_rank = 0
        self.skipped_steps = 0
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.0)

    def parameters(self):
        return [*self.policy.parameters(), *self.value_head.parameters()]

    def optimizers(self):
        return self.optimizer

    def manual_backward(self, loss):
        loss.backward()

    def clip_gradients(self, *args, **kwargs):
        pass  # clipping would hide a difference in scale

    def logprobs(self, rollout: Rollout, model=None):
        model = self.policy if model is None else model
        return completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, self.algo["temperature"])

    @torch.no_grad()
    def ref_logprobs(self, rollout: Rollout):
        return self.logprobs(rollout, self.ref_policy)

    def gradient(self) -> torch.Tensor:
        return torch.cat([p.grad.flatten() for p in self.parameters() if p.grad is not None])


def rollout_and_rewards():
    g = torch.Generator().manual_seed(1)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[::2, 0] = 0  # some prompts left-padded
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])  # completions of different lengths: the token weights matter
    completion_mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    rollout = Rollout(
        prompt_ids=torch.randint(1, VOCAB, (B, P), generator=g) * prompt_mask,
        prompt_mask=prompt_mask,
        completion_ids=torch.randint(1, VOCAB, (B, T), generator=g) * completion_mask,
        completion_mask=completion_mask,
        truncated=lengths == T,
        texts=[f"rewrite {i}" for i in range(B)],
    )
    return rollout, torch.rand(B, generator=g)


def gradient_and_stats(algo: dict, steps: int):
    cfg = algo | {"gradient_accumulation_steps": steps}
    module = TinyLearner(cfg)
    rollout, rewards = rollout_and_rewards()
    torch.manual_seed(2)  # PPO's minibatch order
    stats = build_algorithm(cfg).update(module, rollout, rewards, rollout.completion_mask)
    return module.gradient(), stats


def algorithm(name: str, **overrides) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")) | overrides


@pytest.mark.parametrize(
    "algo",
    [
        *(algorithm("grpo", num_generations=3, loss_type=t) for t in ("grpo", "dapo", "dr_grpo", "bnpo")),
        algorithm("grpo", num_generations=3, num_iterations=2, beta=0.0),
        algorithm("ppo", num_generations=B, num_ppo_epochs=1, kl_coef=0.1),
    ],
    ids=["grpo", "dapo", "dr_grpo", "bnpo", "two-iterations-no-kl", "ppo"],
)
@pytest.mark.parametrize("steps", [2, 4])
def test_micro_batches_give_the_gradient_of_the_whole_batch(algo, steps):
    whole, whole_stats = gradient_and_stats(algo, 1)
    split, split_stats = gradient_and_stats(algo, steps)
    assert whole.abs().max() > 0  # a gradient to compare
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-7)
    for key in ("loss", "kl", "policy_loss", "value_loss"):
        if key in whole_stats:  # the logged statistics are the whole batch's too
            torch.testing.assert_close(torch.as_tensor(split_stats[key]), torch.as_tensor(whole_stats[key]))
