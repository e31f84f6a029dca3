"""PPO and LoRA: real updates, the reference under LoRA, plain exports (the real steps on the tiny random Llama)."""

import lightning as L
import pytest
import torch
from mlflow import MlflowClient
from safetensors import safe_open

from prewrite import model_zoo
from prewrite.lightning_module import Member, PRewriteModule
from prewrite.rollout import hf_rollout
from prewrite.tasks import load_task
from tests.conftest import DEFAULT_EXPERIMENT

pytestmark = pytest.mark.integration


def _module(cfg) -> PRewriteModule:
    task = load_task(cfg.task)
    # not scored here: no scorer, no dev rows
    member = Member(task, None, task.instruction, [])
    return PRewriteModule.from_config(cfg, [member], steps=1, examples_per_step=1, seed=0)


def test_lora_trains_only_the_adapter_and_its_reference_is_the_base_model(compose_train):
    module = _module(compose_train("rewriter.lora.enabled=true", "algorithm.beta=0.04"))
    assert module.ref_policy is None  # no copy: the reference is the policy with its adapter off
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    assert 0 < trainable < 0.1 * total
    module.trainer = L.Trainer(accelerator="cpu", logger=False)  # configure_optimizers reads the strategy
    (opt,), _ = module.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == trainable

    torch.manual_seed(0)
    prompt_ids, _ = module.rewriter_prompts(module.members[0], [])
    rollout = hf_rollout.HFRollout(module.policy, module.tokenizer).generate(prompt_ids, 2, max_new_tokens=8)
    base = model_zoo.load_model(compose_train().rewriter.model_name_or_path).eval()
    with torch.no_grad():
        base_logps = module.logprobs(rollout, base)
        torch.testing.assert_close(module.ref_logprobs(rollout), base_logps)
        for name, p in module.policy.named_parameters():  # LoRA's B starts at 0: move the adapter
            if "lora_B" in name:
                p.add_(0.05)
        moved = module.logprobs(rollout)
        assert (moved - base_logps).abs().max() > 1e-2
        torch.testing.assert_close(module.ref_logprobs(rollout), base_logps)  # the reference did not move
        # the export is a plain transformers model computing what the policy computes
        plain = model_zoo.plain_model(module.policy)
        assert not any("lora" in n for n, _ in plain.named_parameters())
        torch.testing.assert_close(module.logprobs(rollout, plain), moved, atol=1e-4, rtol=0)


def test_ppos_value_head_is_trained_and_checkpointed_with_the_module_and_its_kl_coefficient_resumes(compose_train):
    module = _module(compose_train("algorithm=ppo"))
    assert type(module.algorithm).__name__ == "PPO" and module.value_head is module.get_submodule("value_head")
    module.trainer = L.Trainer(accelerator="cpu", logger=False)  # configure_optimizers reads the strategy
    (opt,), _ = module.configure_optimizers()
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in module.value_head.parameters())
    assert {"value_head.weight", "value_head.bias"} <= set(module.state_dict())
    # the checkpoint's `prewrite` dict keeps PPO's coefficient under `kl_coef`, as before the algorithm objects
    module.algorithm.kl_coef = 0.07
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["prewrite"]["kl_coef"] == 0.07
    fresh = _module(compose_train("algorithm=ppo"))
    assert fresh.algorithm.kl_coef == 0.05
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.algorithm.kl_coef == 0.07


@pytest.mark.parametrize(
    "weights", [["rewriter.lora.enabled=true"], ["algorithm.gradient_accumulation_steps=2"]], ids=["lora", "full"]
)
def test_ppo_runs_real_steps_and_adapts_its_kl_coefficient(compose_train, tmp_path, weights, tiny_models):
    from prewrite.training import train

    train(compose_train(
        "algorithm=ppo", *weights,
        "reward=perplexity",  # continuous: the rewrites' rewards differ, so the first update moves the policy
        "algorithm.adap_kl_ctrl=true", "algorithm.horizon=10", "algorithm.target=0.001",
        "algorithm.learning_rate=1e-3", "algorithm.num_ppo_epochs=2", "algorithm.num_mini_batches=2",
        "steps=2", "eval_every=1", "examples_per_step=2", "dev_examples=4",
        "algorithm.num_generations=4", "algorithm.max_completion_length=12",
        f"paths.outputs_dir={tmp_path}", f"paths.run_dir={tmp_path}/run",
        "trainer.enable_progress_bar=false", "log_rewriter_to_mlflow=false", "save_checkpoints=false",
        "system_metrics_interval_s=null", *tiny_models,
    ))  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]

    def values(key):
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    for key in ("train/policy_loss", "train/value_loss", "train/kl", "train/clipfrac", "train/returns_mean"):
        assert len(values(key)) == 2, key
    kl, coef = values("train/kl"), values("train/kl_coef")
    assert coef[0] == 0.05  # the configured start
    # step 1 samples from the reference itself (a copy, or the adapter starting as a no-op): zero up to fp32
    # rounding. On an AMX Xeon the policy's and its full-weight copy's log-probs of the same batch differ by 4e-6
    assert abs(kl[0]) < 1e-4
    # after a real update at lr 1e-3 the policy has left the reference. The k1 estimate over 4 samples is
    # signed: on the tiny model's near-uniform policy its noise can outweigh the (positive) true KL
    assert abs(kl[1]) > 0.001
    # the coefficient used at step 2 was adapted after step 1, whose KL (~0) was under the target
    assert coef[1] == pytest.approx(0.05 * (1 - 0.2 * 4 / 10))
    # the export is a plain Hugging Face folder: merged weights, no adapter keys
    with safe_open(str(tmp_path / "run" / "rewriter" / "model.safetensors"), "pt") as f:
        assert f.keys() and not any("lora" in k for k in f.keys())
