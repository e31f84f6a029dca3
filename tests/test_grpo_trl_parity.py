"""Our GRPO against the installed TRL's GRPOTrainer on identical inputs.

TRL generates the completions and computes its advantages and loss on them (its own
`_generate_and_score_completions` and `_compute_loss`); we compute ours from the same tensors with
prewrite.algorithms and compare. The policy is moved off the sampling policy first, so the
importance ratios differ from 1 and the clipping and KL terms are exercised, not just the
ratio-one case.
"""

import pytest
import torch

from prewrite import model_zoo
from prewrite.algorithms.grpo import group_advantages, grpo_loss
from prewrite.algorithms.logprobs import completion_logprobs

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

pytestmark = pytest.mark.integration

G = 8
# None = a completion with no computable reward: TRL and we both leave it out of its group.
REWARDS = [1.0, 0.0, None, 0.5, 0.25, 0.75, 0.0, 1.0]


@pytest.fixture(scope="module")
def base():
    path = model_zoo.resolve("embedded:smollm2-135m-instruct")
    return path, model_zoo.load_tokenizer(path)


def _trl_trainer(base, tmp_path, **config):
    path, tokenizer = base
    prompt = [{"role": "user", "content": "Rewrite the instruction: classify the sentiment of the review."}]
    dataset = datasets.Dataset.from_list([{"prompt": prompt}] * G)
    args = trl.GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=G,
        num_generations=G,
        max_completion_length=12,
        temperature=0.7,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        **config,
    )
    trainer = trl.GRPOTrainer(
        model=model_zoo.load_model(path),
        reward_funcs=lambda completions, **_: REWARDS[: len(completions)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.training_step in a real run
    return trainer, dataset


def _move_policy(model: torch.nn.Module) -> None:
    """Perturb the policy so new log-probs differ from the sampling ones by more than the clip range."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02 * p.std().clamp(min=1e-3))


CASES = [
    {"loss_type": "grpo", "scale_rewards": "group", "beta": 0.04},
    {"loss_type": "grpo", "scale_rewards": "group", "beta": 0.04, "use_bias_correction_kl": False},
    {"loss_type": "dapo", "scale_rewards": "group", "beta": 0.0},
    {"loss_type": "dapo", "scale_rewards": "batch", "beta": 0.04, "epsilon_high": 0.28},
    {"loss_type": "dr_grpo", "scale_rewards": "none", "beta": 0.04},
    {"loss_type": "bnpo", "scale_rewards": "group", "beta": 0.1, "epsilon": 0.1},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_advantages_loss_and_gradients_match_trl(base, tmp_path, case):
    trainer, dataset = _trl_trainer(base, tmp_path, num_iterations=2, **case)  # 2: TRL keeps old log-probs
    model = trainer.model.train()
    torch.manual_seed(0)
    inputs = trainer._generate_and_score_completions([dataset[i] for i in range(G)])

    rewards = torch.tensor([float("nan") if r is None else r for r in REWARDS])
    ours_adv = group_advantages(rewards, G, case["scale_rewards"])
    torch.testing.assert_close(ours_adv, inputs["advantages"], atol=1e-6, rtol=0)

    _move_policy(model)
    theirs = trainer._compute_loss(model, inputs)
    theirs.backward()
    theirs_grad = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    n = inputs["completion_ids"].size(1)
    logps = completion_logprobs(model, input_ids, attention_mask, n, temperature=0.7)
    ours, stats = grpo_loss(
        logps,
        inputs["old_per_token_logps"],
        ours_adv,
        inputs["completion_mask"],
        loss_type=case["loss_type"],
        epsilon=case.get("epsilon", 0.2),
        epsilon_high=case.get("epsilon_high"),
        beta=case["beta"],
        ref_logps=inputs.get("ref_per_token_logps"),
        use_bias_correction_kl=case.get("use_bias_correction_kl", True),
        max_completion_length=12,
    )
    ours.backward()

    assert stats["clip_ratio/region"] > 0, "the perturbation must push some ratios out of the clip range"
    torch.testing.assert_close(ours.detach(), theirs.detach(), atol=1e-6, rtol=0)
    # Gradients: the two forward passes differ by float rounding (~1e-5 on a log-prob), so compare
    # the whole gradient by its relative error rather than element by element.
    names = sorted(theirs_grad)
    grads = dict(model.named_parameters())
    ours_flat = torch.cat([grads[n].grad.flatten() for n in names])
    theirs_flat = torch.cat([theirs_grad[n].flatten() for n in names])
    assert (ours_flat - theirs_flat).norm() / theirs_flat.norm() < 1e-4
    metrics = trainer._metrics["train"]
    torch.testing.assert_close(
        stats["clip_ratio/region"].item(), metrics["clip_ratio/region_mean"][-1], atol=1e-6, rtol=0
    )
    if case["beta"]:
        torch.testing.assert_close(stats["kl"].item(), metrics["kl"][-1], atol=1e-6, rtol=0)
