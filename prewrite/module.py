"""The LightningModule: one training step = rollout -> task-LLM scoring -> GRPO update.

Lightning owns the loop, devices, logging and checkpoints; the RL math lives in
prewrite.algorithms and is called from here with explicit tensors (manual optimization).
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from prewrite import distributed, models
from prewrite.algorithms.grpo import group_advantages, grpo_loss
from prewrite.algorithms.logprobs import completion_logprobs
from prewrite.backends.usage import Usage
from prewrite.rewards import RewriteScorer
from prewrite.rollout import hf as rollout_hf
from prewrite.tasks import Task

# per-rank train metrics that add up over ranks (distributed.over_ranks); the others are averaged
SUMMED_OVER_RANKS = ("train/metric_none", "train/empty_rewrites", "train/task_llm_calls")


class PRewriteModule(L.LightningModule):
    def __init__(
        self,
        task: Task,
        scorer: RewriteScorer,
        rewriter: dict,
        algorithm: dict,
        meta_prompt: str,
        steps: int,
        examples_per_step: int,
        dev_rows: list[dict],
        seed: int,
        monitor: str,
        instruction: str | None = None,
        export_dir: str | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False  # several policy epochs per rollout, as in TRL's num_iterations
        self.task, self.scorer = task, scorer
        self.algo = algorithm
        self.steps, self.examples_per_step, self.seed = steps, examples_per_step, seed
        self.tokenizer = models.load_tokenizer(rewriter["model_name_or_path"])
        self.policy = models.load_model(rewriter["model_name_or_path"], rewriter["dtype"]).train()
        if rewriter.get("gradient_checkpointing"):
            self.policy.gradient_checkpointing_enable()
        # The reference policy is frozen and rebuilt from the base weights, so it stays out of the
        # state dict (and out of checkpoints); no reference is loaded when beta == 0.
        ref = copy.deepcopy(self.policy).eval().requires_grad_(False) if algorithm["beta"] != 0 else None
        object.__setattr__(self, "ref_policy", ref)
        # The instruction to rewrite: the task's initial one, or (multi-stage) the previous stage's best.
        self.instruction = task.instruction if instruction is None else instruction
        self.meta_prompt = meta_prompt
        self.prompt_ids = [rollout_hf.rewriter_prompt(self.tokenizer, meta_prompt, self.instruction)]
        self.dev_rows = dev_rows  # scored at every dev evaluation
        self.rewrite_rows: list[dict[str, Any]] = []  # the rewrites table (see callbacks.RewritesTable)
        self.rollout_step = 0  # rollout steps done; Lightning's global_step counts optimizer steps
        self.monitor = monitor  # the dev score that picks the best rewriter (a key of score_on_dev)
        self.export_dir = export_dir  # where the best-on-dev rewriter is saved as a Hugging Face folder
        self.best: dict[str, Any] | None = None  # {"step", "score", "rewrite"} of the best dev evaluation
        self.rewriter_usage = Usage()  # rollout tokens and samples, totalled over the run
        self.task_usage_before: dict[str, float] = {}  # task-LLM usage of the run before a resume
        self.last_task_usage: dict[str, float] = {}  # task-LLM totals at the last step (for checkpoints)

    def configure_model(self) -> None:
        self.policy = distributed.shard(self.policy)  # FSDP only; the frozen reference stays unwrapped

    def on_fit_start(self) -> None:
        if self.ref_policy is not None:  # not a registered submodule, so Lightning does not move it
            self.ref_policy.to(self.device)

    # ---- data: one "batch" per rollout step; the step's examples derive from [seed, step] ----
    def train_dataloader(self) -> DataLoader:
        # Only ticks: the step number is the module's counter (kept in checkpoints), because a resumed
        # Lightning epoch continues its batch count over a fresh iterator of the same length.
        return DataLoader(range(self.steps), batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(range(1), batch_size=None)

    def configure_optimizers(self):
        algo = self.algo
        opt = distributed.adamw(
            self.trainer, self.policy.parameters(), lr=algo["learning_rate"], weight_decay=algo["weight_decay"]
        )
        warmup = max(1, algo["warmup_steps"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return [opt], [sched]

    # ---- training ----
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        step = self.rollout_step
        self.rollout_step = step + 1
        algo = self.algo
        t0 = time.perf_counter()

        self.policy.eval()
        with distributed.generation_context(self.trainer, self.policy):
            rollout = rollout_hf.generate(
                self.policy,
                self.tokenizer,
                self.prompt_ids,
                num_generations=algo["num_generations"],
                max_new_tokens=algo["max_completion_length"],
                temperature=algo["temperature"],
                top_p=algo["top_p"],
            )
        self.policy.train()
        t1 = time.perf_counter()

        rows = self.task.sample("train", self.examples_per_step, seed=[self.seed, step])
        calls_before = self.scorer.backend.num_calls
        scores = self.scorer(rollout.texts, rows)
        t2 = time.perf_counter()

        rewards = torch.tensor([float("nan") if r is None else r for r in scores.rewards], device=self.device)
        # every rank's rewards: `scale_rewards=batch` and the logged reward see the whole step
        rewards = distributed.gather(self, rewards)
        advantages = group_advantages(rewards, algo["num_generations"], algo["scale_rewards"])
        advantages = distributed.this_rank(self, advantages)
        mask = rollout.completion_mask
        if algo["mask_truncated_completions"]:
            mask = mask * (~rollout.truncated).unsqueeze(1).to(mask.dtype)
        n_tokens = rollout.completion_ids.size(1)
        # dapo's token mean over every rank's completions, as TRL does (gradients are averaged over ranks)
        num_items = self.trainer.strategy.reduce(mask.sum().to(torch.float32), reduce_op="mean")

        def logprobs(model):
            return completion_logprobs(model, rollout.input_ids, rollout.attention_mask, n_tokens, algo["temperature"])

        with torch.no_grad():
            ref_logps = logprobs(self.ref_policy) if self.ref_policy is not None else None
            # With one policy epoch the sampling policy is the current one: ratio 1 (TRL does the same).
            old_logps = logprobs(self.policy) if algo["num_iterations"] > 1 else None

        opt, sched = self.optimizers(), self.lr_schedulers()
        for _ in range(algo["num_iterations"]):
            logps = logprobs(self.policy)
            loss, stats = grpo_loss(
                logps,
                logps.detach() if old_logps is None else old_logps,
                advantages,
                mask,
                loss_type=algo["loss_type"],
                epsilon=algo["epsilon"],
                epsilon_high=algo["epsilon_high"],
                beta=algo["beta"],
                ref_logps=ref_logps,
                max_completion_length=algo["max_completion_length"],
                num_items_in_batch=num_items,
            )
            opt.zero_grad()
            self.manual_backward(loss)
            distributed.clip_gradients(self, self.policy, opt, algo["max_grad_norm"])
            opt.step()
        sched.step()
        t3 = time.perf_counter()

        valid = rewards[~torch.isnan(rewards)]
        per_rank = {  # this rank's numbers, summed (SUMMED_OVER_RANKS) or averaged over ranks
            "train/metric_none": float(scores.none_values),  # per-example metric values left out
            "train/empty_rewrites": float(sum(not t for t in rollout.texts)),
            "train/loss": loss.detach(),
            "train/completion_length": rollout.completion_mask.sum(1).float().mean(),
            "train/truncated_fraction": rollout.truncated.float().mean(),
            "train/task_llm_calls": float(self.scorer.backend.num_calls - calls_before),
            "time/rollout_s": t1 - t0,
            "time/reward_s": t2 - t1,
            "time/update_s": t3 - t2,
            "time/step_s": t3 - t0,
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"train/{name}": _nanmean(vals) for name, vals in scores.metrics.items()},
        }
        metrics = {  # over every rank's rewards
            "train/reward": valid.mean() if len(valid) else torch.tensor(float("nan")),
            "train/reward_std": valid.std() if len(valid) > 1 else torch.tensor(0.0),
            "train/reward_none": float(len(rewards) - len(valid)),  # rewrites with no computable reward
            **distributed.over_ranks(self, per_rank, summed=SUMMED_OVER_RANKS),
            **self.usage_totals(rollout),
            "train/lr": sched.get_last_lr()[0],
        }
        self.log_to_loggers(metrics)
        self.log("reward", metrics["train/reward"], prog_bar=True, logger=False, batch_size=1)
        rows = []
        for i, text in enumerate(rollout.texts):
            per_metric = {name: vals[i] for name, vals in scores.metrics.items()}
            row = {"step": self.rollout_step, "split": "train", "rewrite": text, "reward": scores.rewards[i]}
            rows.append(row | per_metric)
        self.rewrite_rows += distributed.gather_objects(self, rows)  # every rank's rewrites, in rank order

    def log_to_loggers(self, metrics: dict[str, Any]) -> None:
        """Log at step = rollout steps done, so train and dev curves share one x-axis
        (Lightning's own step counts optimizer steps or batches, off by one between hooks)."""
        values = {k: float(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=self.rollout_step)

    def usage_totals(self, rollout: rollout_hf.Rollout) -> dict[str, float]:
        """Run totals so far per role: `usage/rewriter/*` and `usage/task_llm/*` (calls, tokens, and
        cost_usd / cache_hit_rate where the backend has them)."""
        # every rank's counts, so the totals are the run's and the same on every rank (and in checkpoints)
        counts = {
            "calls": len(rollout.texts),
            "prompt_tokens": int(rollout.prompt_mask.sum()),
            "completion_tokens": int(rollout.completion_mask.sum()),
        }
        counts = distributed.over_ranks(self, counts, summed=counts)
        self.rewriter_usage.add(**{k: int(v) for k, v in counts.items()})
        task = {k: v for k, v in self.scorer.backend.usage_snapshot().items() if k != "cache_hit_rate"}
        task = distributed.over_ranks(self, task, summed=task)
        before = self.task_usage_before
        task = {k: v + before.get(k, 0.0) for k, v in task.items()}
        if "cache_hits" in task:
            task["cache_hit_rate"] = task["cache_hits"] / max(1.0, task["cache_hits"] + task["cache_misses"])
        self.last_task_usage = task
        return {f"usage/rewriter/{k}": v for k, v in self.rewriter_usage.snapshot().items()} | {
            f"usage/task_llm/{k}": v for k, v in task.items()
        }

    # ---- dev evaluation of the greedy rewrite (PRewrite-I) ----
    def greedy_rewrite(self) -> str:
        self.policy.eval()
        with distributed.generation_context(self.trainer, self.policy):
            out = rollout_hf.generate(
                self.policy,
                self.tokenizer,
                self.prompt_ids,
                num_generations=1,
                max_new_tokens=self.algo["max_completion_length"],
                do_sample=False,
            )
        self.policy.train()
        return out.texts[0]

    def score_on_dev(self, instruction: str) -> dict[str, float]:
        """{"reward": ..., <metric>: ...} of one instruction on the fixed dev rows."""
        scores = self.scorer([instruction], self.dev_rows)
        return {"reward": _nan(scores.rewards[0])} | {name: _nan(vals[0]) for name, vals in scores.metrics.items()}

    def evaluate_dev(self) -> dict[str, float]:
        """Score the greedy rewrite (PRewrite-I) on the fixed dev rows and log it; when it beats every
        earlier evaluation on `monitor`, keep it as the best and export the rewriter."""
        rewrite = self.greedy_rewrite()  # on every rank: a sharded policy generates together
        # scored once, on rank zero: every rank then agrees on the best, the export and early stopping
        rewrite, scores = distributed.on_rank_zero(self.trainer, lambda: (rewrite, self.score_on_dev(rewrite)))
        self.log_to_loggers({f"dev/{k}": v for k, v in scores.items()})
        self.rewrite_rows.append({"step": self.rollout_step, "split": "dev", "rewrite": rewrite, **scores})
        score = scores[self.monitor]
        if self.best is None or score > self.best["score"]:
            self.best = {"step": self.rollout_step, "score": score, "rewrite": rewrite}
            if self.export_dir:
                state_dict = distributed.full_state_dict(self.trainer, self.policy)  # every rank gathers
                if self.trainer.is_global_zero:
                    self.save_rewriter(self.export_dir, state_dict)
                self.trainer.strategy.barrier()
        return scores

    def save_rewriter(self, path: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A plain Hugging Face folder (policy + tokenizer) plus prewrite.json, which records what
        `prewrite.rewrite` and `prewrite.evaluate` need to use it the way it was trained.
        `state_dict`: the full weights of a sharded policy (distributed.full_state_dict)."""
        self.policy.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        info = {"task": self.task.name, "instruction": self.instruction, "meta_prompt": self.meta_prompt}
        info |= {"monitor": self.monitor, **(self.best or {})}
        (Path(path) / "prewrite.json").write_text(json.dumps(info, indent=2))

    # ---- checkpoint: what Lightning does not keep (weights, optimizer, scheduler and loops it does) ----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["prewrite"] = {
            "rollout_step": self.rollout_step,
            "usage": {"rewriter": self.rewriter_usage.snapshot(), "task_llm": self.last_task_usage},
            "best": self.best,
            "rewrite_rows": self.rewrite_rows,
            "rng": distributed.gather_objects(self, [_rng_state()]),  # one per rank
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["prewrite"]
        self.rollout_step, self.best, self.rewrite_rows = state["rollout_step"], state["best"], state["rewrite_rows"]
        rewriter = state["usage"]["rewriter"]
        self.rewriter_usage.add(
            int(rewriter["calls"]), int(rewriter["prompt_tokens"]), int(rewriter["completion_tokens"])
        )
        self.task_usage_before = state["usage"]["task_llm"]
        self._rng_to_restore = state["rng"]  # one per rank, applied at train start, after Lightning's own set-up

    def on_train_start(self) -> None:
        if self.rollout_step > 0:  # resumed: step 0 was evaluated and logged before the checkpoint
            if self.global_rank < len(self._rng_to_restore):  # a rank new to the run keeps its fresh seed
                _set_rng_state(self._rng_to_restore[self.global_rank])
            return
        # Step 0 of the dev curve: the initial instruction and the untrained rewriter's greedy rewrite,
        # under the same precision context as the later validation steps.
        initial = distributed.on_rank_zero(self.trainer, lambda: self.score_on_dev(self.instruction))
        self.log_to_loggers({f"dev/initial_instruction/{k}": v for k, v in initial.items()})
        self.rewrite_rows.append({"step": 0, "split": "initial", "rewrite": self.instruction, **initial})
        with self.trainer.precision_plugin.val_step_context():
            self.evaluate_dev()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        scores = self.evaluate_dev()
        # for Lightning callbacks (early stopping); the loggers got them from evaluate_dev
        self.log_dict({f"dev/{k}": v for k, v in scores.items()}, batch_size=1, logger=False, sync_dist=True)


def _rng_state() -> dict[str, Any]:
    # plain types only: Lightning loads checkpoints with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, keys.tolist(), pos, has_gauss, gauss]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _nanmean(values: list[float | None]) -> float:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else float("nan")
