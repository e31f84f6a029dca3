"""The LightningModule: one training step = rollout -> task-LLM scoring -> GRPO or PPO update.

A step draws from one `Member` (the task, or one task of a mixture). With `rewrite_mode="task"` the
rewriter rewrites the member's instruction and every rewrite of the group is scored on the step's
shared examples; with `rewrite_mode="input"` it rewrites the instruction for each example (the meta
prompt shows both), and each group is the rewrites of one (instruction, example) pair, scored on it.

Lightning owns the loop, devices, logging and checkpoints; the algorithm (prewrite.algorithms.updates:
GRPO or PPO, picked by the config's name) owns its losses, its state and its optimizer steps, which it takes
through this module (manual optimization).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from prewrite import distributed, faults, model_zoo
from prewrite.algorithms.logprobs import completion_logprobs
from prewrite.algorithms.updates import build_algorithm
from prewrite.backends import usage_over
from prewrite.backends.base import TaskModelUnavailable
from prewrite.rewards import RewriteScorer
from prewrite.rewards.scorer import Scores
from prewrite.rollout import build_rollout
from prewrite.rollout.base import Rollout, rewriter_prompt
from prewrite.tasks import Task
from prewrite.tasks.mixture import member_at
from prewrite.usage import Usage

log = logging.getLogger(__name__)

# per-rank train metrics that add up over ranks (distributed.over_ranks); the others are averaged
SUMMED_OVER_RANKS = ("train/metric_none", "train/empty_rewrites", "train/task_llm_calls")
NONFINITE_DEFAULT = 3  # updates skipped in a row (non-finite loss, gradient or reward) before a run stops


@dataclass
class Member:
    """One task a training draws from (its task, or one member of a mixture)."""

    task: Task
    scorer: RewriteScorer
    instruction: str  # what the rewriter rewrites: the task's initial instruction, or (stages) the last stage's best
    dev_rows: list[dict]  # the fixed seeded dev rows of every evaluation


class PRewriteModule(L.LightningModule):
    @classmethod
    def from_config(cls, cfg, members: list[Member], **overrides):
        """The module a training config (conf/train.yaml) describes; `overrides` replace any argument."""
        input_mode = cfg.get("rewrite_mode", "task") == "input"
        kwargs = dict(
            members=members,
            rewriter=OmegaConf.to_container(cfg.rewriter, resolve=True),
            algorithm=OmegaConf.to_container(cfg.algorithm, resolve=True),
            meta_prompt=cfg.input_meta_prompt if input_mode else cfg.meta_prompt,
            rewrite_mode=cfg.get("rewrite_mode", "task"),
            member_sampling={"sampling": cfg.task.get("sampling"), "weights": cfg.task.get("weights")},
            steps=cfg.steps,
            examples_per_step=cfg.examples_per_step,
            seed=cfg.seed,
            monitor=cfg.optimized_metric.removeprefix("dev/"),
            rollout=OmegaConf.to_container(cfg.rollout, resolve=True),
            max_skipped_updates_in_a_row=cfg.get("max_skipped_updates_in_a_row", NONFINITE_DEFAULT),
        )
        return cls(**(kwargs | overrides))

    def __init__(
        self,
        members: list[Member],
        rewriter: dict,
        algorithm: dict,
        meta_prompt: str,
        steps: int,
        examples_per_step: int,
        seed: int,
        monitor: str,
        export_dir: str | None = None,
        rollout: dict | None = None,
        max_skipped_updates_in_a_row: int = NONFINITE_DEFAULT,
        rewrite_mode: str = "task",
        member_sampling: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False  # several policy epochs per rollout, as in TRL's num_iterations
        self.members = members
        self.rewrite_mode = rewrite_mode
        self.member_sampling = member_sampling or {}
        self.algo = algorithm
        self.algorithm = build_algorithm(algorithm)  # GRPO or PPO: its update and its state (PPO's KL coefficient)
        self.steps, self.examples_per_step, self.seed = steps, examples_per_step, seed
        self.tokenizer = model_zoo.load_tokenizer(rewriter["model_name_or_path"], rewriter["chat_template"])
        policy = model_zoo.load_model(rewriter["model_name_or_path"], rewriter["dtype"])
        if rewriter["gradient_checkpointing"]:
            policy.gradient_checkpointing_enable()
        lora = rewriter["lora"]
        # The frozen reference policy: with LoRA the base weights under the adapter (no copy); else a copy
        # rebuilt from the base weights, kept out of the state dict (and checkpoints); none when no KL is used.
        ref = None
        if self.algorithm.kl_weight != 0 and not lora["enabled"]:
            ref = copy.deepcopy(policy).eval().requires_grad_(False)
        object.__setattr__(self, "ref_policy", ref)
        self.policy = (model_zoo.add_lora(policy, lora) if lora["enabled"] else policy).train()
        # Samples the rewrites (conf/rollout; None = transformers generate on the policy itself).
        self.rollout_engine = build_rollout(
            rollout or {"_target_": "prewrite.rollout.hf_rollout.HFRollout"}, self.policy, self.tokenizer
        )
        # PPO's critic, if the algorithm has one: a submodule here, so that Lightning moves it with the policy,
        # configure_optimizers trains it and checkpoints keep it (as `value_head.*`)
        value_head = self.algorithm.value_head(policy.config.hidden_size)
        if value_head is not None:
            self.value_head = value_head
        self.meta_prompt = meta_prompt
        self.rewrite_rows: list[dict[str, Any]] = []  # the rewrites table (see callbacks.RewritesTable)
        self.rollout_step = 0  # rollout steps done; Lightning's global_step counts optimizer steps
        self.monitor = monitor  # the dev score that picks the best rewriter (a key of score_on_dev)
        self.export_dir = export_dir  # where the best-on-dev rewriter is saved as a Hugging Face folder
        self.best: dict[str, Any] | None = None  # {"step", "score", "rewrite"} of the best dev evaluation
        self.rewriter_usage = Usage()  # rollout tokens and samples, totalled over the run
        self.task_usage_before: dict[str, float] = {}  # task-LLM usage of the run before a resume
        self.last_task_usage: dict[str, float] = {}  # task-LLM totals at the last step (for checkpoints)
        self.max_skipped_updates_in_a_row = max_skipped_updates_in_a_row
        self.skipped_updates = 0  # rollout steps whose update was skipped, in part or whole (non-finite values)
        self.skipped_in_a_row: list[int] = []  # the steps of the current run of skipped updates
        self.resumed = False  # restored from a checkpoint: step 0 was evaluated and logged before it

    def configure_model(self) -> None:
        self.policy = distributed.shard(self.policy)  # FSDP only; the frozen reference stays unwrapped

    def on_fit_start(self) -> None:
        if self.ref_policy is not None:  # not a registered submodule, so Lightning does not move it
            self.ref_policy.to(self.device)

    # ---- data: one "batch" per rollout step; the step's examples derive from [seed, step] ----
    def train_dataloader(self) -> DataLoader:
        # Only ticks: the step number is the module's counter (kept in checkpoints), because a resumed
        # Lightning epoch continues its batch count over a fresh iterator of the same length.
        return DataLoader(range(self.steps), batch_size=None, shuffle=False, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        # Its own generator: each iterator draws a base seed, from the global torch stream otherwise, so
        # every dev evaluation would shift the rollouts after it and eval_every would change what is trained.
        return DataLoader(range(1), batch_size=None, generator=torch.Generator())

    def configure_optimizers(self):
        # One optimizer over everything trainable (policy or its LoRA adapter, and PPO's value head):
        # DeepSpeed allows a single optimizer.
        params = [p for p in self.parameters() if p.requires_grad]
        opt = distributed.adamw(
            self.trainer, params, lr=self.algo["learning_rate"], weight_decay=self.algo["weight_decay"]
        )
        warmup = max(1, self.algo["warmup_steps"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return [opt], [sched]

    # ---- training ----
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        step = self.rollout_step
        before = (step, _rng_state())  # what a stop inside this step puts back, so a resume replays it exactly
        self.stop_point(before)
        self.rollout_step = step + 1
        algo = self.algo
        timer = PhaseTimer()
        member = self.member_at(step)
        rows = member.task.sample("train", self.examples_per_step, seed=[self.seed, step])
        prompt_ids, prompt_tokens_cut = self.rewriter_prompts(member, rows)

        with timer("rollout"):
            self.policy.eval()
            with distributed.generation_context(self.trainer, self.policy):
                rollout = self.rollout_engine.generate(
                    prompt_ids,
                    num_generations=algo["num_generations"],
                    max_new_tokens=algo["max_completion_length"],
                    temperature=algo["temperature"],
                    top_p=algo["top_p"],
                )
            self.policy.train()

        with timer("reward"):
            self.stop_point(before)
            calls_before = self.task_calls()
            try:
                scores, outage = self.score(member, rollout.texts, rows), None
            except TaskModelUnavailable as e:
                outage = e
            self.stop_point(before, outage)

        with timer("update"):
            rewards = torch.tensor([float("nan") if r is None else r for r in scores.rewards], device=self.device)
            # every rank's rewards: `scale_rewards=batch` and the logged reward see the whole step
            rewards = distributed.gather(self, rewards)
            mask = rollout.completion_mask
            if algo["mask_truncated_completions"]:
                mask = mask * (~rollout.truncated).unsqueeze(1).to(mask.dtype)
            self.stop_point(before)  # the last one: the update changes the weights
            self.skipped_steps = 0  # optimizer steps skipped in this update (step_optimizer)
            if torch.isinf(rewards).any():  # None is NaN here and means "no reward"; an infinite one is a bug
                stats, self.skipped_steps, why = {}, 1, "reward"
            else:
                stats, why = self.algorithm.update(self, rollout, rewards, mask), "loss or gradient"
                self.lr_schedulers().step()  # once per rollout step, however many optimizer steps it took
            self.count_skipped(why)

        with timer("sync"):
            self.rollout_engine.sync(self.policy)  # the next rollout samples from the updated weights
        step_s = timer.elapsed()

        valid = rewards[~torch.isnan(rewards)]
        per_rank = {  # this rank's numbers, summed (SUMMED_OVER_RANKS) or averaged over ranks
            "train/metric_none": float(scores.none_values),  # per-example metric values left out
            "train/empty_rewrites": float(sum(not t for t in rollout.texts)),
            "train/prompt_tokens_cut": float(prompt_tokens_cut),  # by algorithm.max_prompt_length, from one prompt
            "train/completion_length": rollout.completion_mask.sum(1).float().mean(),
            "train/truncated_fraction": rollout.truncated.float().mean(),
            "train/task_llm_calls": float(self.task_calls() - calls_before),
            "train/reward_se": _nanmean(scores.reward_se),  # averaged over ranks with the rest
            "train/time/rollout_s": timer.seconds["rollout"],
            "train/time/reward_s": timer.seconds["reward"],
            "train/time/update_s": timer.seconds["update"],
            "train/time/sync_s": timer.seconds["sync"],
            "train/time/step_s": step_s,
            **{f"train/{k}": v for k, v in stats.items()},
            **{f"train/{name}": _nanmean(vals) for name, vals in scores.metrics.items()},
        }
        metrics = {  # over every rank's rewards
            "train/reward": valid.mean() if len(valid) else torch.tensor(float("nan")),
            "train/reward_std": valid.std() if len(valid) > 1 else torch.tensor(0.0),
            "train/reward_none": float(len(rewards) - len(valid)),  # rewrites with no computable reward
            **distributed.over_ranks(self, per_rank, summed=SUMMED_OVER_RANKS),
            **self.usage_totals(rollout),
            "train/skipped_updates": float(self.skipped_updates),
            "train/lr": self.lr_schedulers().get_last_lr()[0],
        }
        metrics |= reward_signal(rewards, algo.get("num_generations", len(rewards)), metrics["train/reward_se"])
        if len(self.members) > 1:  # which member this step drew, and its reward under its own name
            metrics[f"train/{member.task.name}/reward"] = metrics["train/reward"]
        self.log_to_loggers(metrics)
        self.log("reward", metrics["train/reward"], prog_bar=True, logger=False, batch_size=1)
        dev = [r[self.monitor] for r in self.rewrite_rows if r["split"] == "dev"]
        if dev:  # the latest dev score of the greedy rewrite, beside the reward in the progress bar
            self.log("dev", dev[-1], prog_bar=True, logger=False, batch_size=1)
        table = []
        for i, text in enumerate(rollout.texts):
            per_metric = {name: vals[i] for name, vals in scores.metrics.items()}
            row = {"step": self.rollout_step, "split": "train", "rewrite": text, "reward": scores.rewards[i]}
            written_for = rows[i // algo["num_generations"]] if self.rewrite_mode == "input" else None
            row |= self.row_context(member, written_for)
            table.append(row | per_metric)
        self.rewrite_rows += distributed.gather_objects(self, table)  # every rank's rewrites, in rank order

    # ---- what one step or evaluation draws from ----
    def member_at(self, step: int) -> Member:
        return self.members[member_at(self.member_sampling, len(self.members), self.seed, step)]

    def rewriter_prompts(self, member: Member, rows: list[dict]) -> tuple[list[list[int]], int]:
        """The rewriter's prompts: the member's instruction in the meta prompt once (task mode) or once per
        row, with the row's input (input mode); and the most tokens `max_prompt_length` cut from one."""
        inputs = [member.task.input_text(row) for row in rows] if self.rewrite_mode == "input" else [None]
        max_length = self.algo["max_prompt_length"]
        prompts = [rewriter_prompt(self.tokenizer, self.meta_prompt, member.instruction, max_length, x) for x in inputs]
        return [ids for ids, _ in prompts], max(cut for _, cut in prompts)

    def score(self, member: Member, rewrites: list[str], rows: list[dict]) -> Scores:
        """Task mode: every rewrite on every row. Input mode: each rewrite on the row it was written for
        (rows[i] has the i-th run of len(rewrites) / len(rows) rewrites, as the rollout groups them)."""
        if self.rewrite_mode == "task":
            return member.scorer(rewrites, rows)
        per_row = len(rewrites) // len(rows)
        return member.scorer.score_groups([[(rw, rows[i // per_row])] for i, rw in enumerate(rewrites)])

    def row_context(self, member: Member, row: dict | None) -> dict[str, str]:
        """The rewrites table's columns that say what a rewrite was for: its task (mixtures), its input."""
        context = {"task": member.task.name} if len(self.members) > 1 else {}
        return context | ({"input": member.task.input_text(row)} if row is not None else {})

    def task_calls(self) -> int:
        return int(usage_over([m.scorer.backend for m in self.members]).get("calls", 0))

    def logprobs(self, rollout: Rollout, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Per-token log-probs of the rollout's completions under `model` (default: the policy)."""
        n = rollout.completion_ids.size(1)
        model = self.policy if model is None else model
        return completion_logprobs(model, rollout.input_ids, rollout.attention_mask, n, self.algo["temperature"])

    @torch.no_grad()
    def ref_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """Log-probs under the frozen reference: the base weights (with LoRA, the policy with its adapter off)."""
        if self.ref_policy is not None:
            return self.logprobs(rollout, self.ref_policy)
        with self.policy.disable_adapter():
            return self.logprobs(rollout)

    def step_optimizer(self, losses: Iterable[torch.Tensor]) -> None:
        """One optimizer step of the algorithm's update (named apart from Lightning's `optimizer_step` hook)
        on the sum of `losses`, the micro-batches' weighted losses: each is backpropagated as it comes, so
        one micro-batch's graph is freed before the next one's forward. Skipped (and counted) when a loss
        or a gradient is not finite on some rank: one such step would make every weight NaN."""
        opt = self.optimizers()
        opt.zero_grad()
        reduce = self.trainer.strategy.reduce_boolean_decision  # every rank skips together
        for loss in losses:
            if not reduce(bool(torch.isfinite(loss.detach()).all()), all=True):
                opt.zero_grad()
                self.skipped_steps += 1
                return
            self.manual_backward(loss)
        grads = [p.grad for p in self.parameters() if p.grad is not None]  # none under DeepSpeed: it checks itself
        if not reduce(all(bool(torch.isfinite(g).all()) for g in grads), all=True):
            opt.zero_grad()
            self.skipped_steps += 1
            return
        distributed.clip_gradients(self, self.policy, opt, self.algo["max_grad_norm"])
        opt.step()

    def count_skipped(self, why: str) -> None:
        """Counts a step whose update was skipped; stops the run after `max_skipped_updates_in_a_row`."""
        if not self.skipped_steps:
            self.skipped_in_a_row = []
            return
        self.skipped_updates += 1
        self.skipped_in_a_row.append(self.rollout_step)
        log.warning("step %d: update skipped (non-finite %s)", self.rollout_step, why)
        if len(self.skipped_in_a_row) >= self.max_skipped_updates_in_a_row:
            raise faults.NonFiniteError(
                f"updates of steps {self.skipped_in_a_row} skipped in a row: non-finite {why} "
                f"(max_skipped_updates_in_a_row={self.max_skipped_updates_in_a_row}). The weights are those "
                "before them and the last checkpoint is untouched; lower algorithm.learning_rate or check the "
                "reward functions."
            )

    def stop_point(self, before: tuple[int, dict] | None = None, outage: TaskModelUnavailable | None = None) -> None:
        """A safe point: if a stop signal came or the task model is down (on any rank), put back what
        `before` (step, RNG state) says this unfinished step has changed and raise StopRequested
        (callbacks.StopOnSignal saves the checkpoint)."""
        signum = faults.agreed_stop(self.trainer, local=outage is not None)
        if signum is None:
            return
        if before is not None:
            self.rollout_step = before[0]
            _set_rng_state(before[1])
        raise faults.TaskModelDown(outage) if outage else faults.StopRequested(signum)

    def log_to_loggers(self, metrics: dict[str, Any]) -> None:
        """Log at step = rollout steps done, so train and dev curves share one x-axis
        (Lightning's own step counts optimizer steps or batches, off by one between hooks)."""
        values = {k: float(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=self.rollout_step)

    def usage_totals(self, rollout: Rollout) -> dict[str, float]:
        """Run totals so far per role: `train/usage/rewriter/*` and `train/usage/task_llm/*` (calls, tokens, and
        cost_usd / cache_hit_rate where the backend has them)."""
        # every rank's counts, so the totals are the run's and the same on every rank (and in checkpoints)
        counts = {
            "calls": len(rollout.texts),
            "prompt_tokens": int(rollout.prompt_mask.sum()),
            "completion_tokens": int(rollout.completion_mask.sum()),
        }
        counts = distributed.over_ranks(self, counts, summed=counts)
        self.rewriter_usage.add(**{k: int(v) for k, v in counts.items()})
        return {f"train/usage/rewriter/{k}": v for k, v in self.rewriter_usage.snapshot().items()} | {
            f"train/usage/task_llm/{k}": v for k, v in self.task_usage().items()
        }

    def task_usage(self) -> dict[str, float]:
        """The task LLM's run totals over every rank (collective: call it on every rank): the backend's
        calls and tokens, cache counts, and `requests`, the prompts the scorer asked for (training
        rewards and dev evaluations, cache hits included): what prewrite.compare budgets by."""
        task = usage_over([m.scorer.backend for m in self.members])
        task["requests"] = float(sum(m.scorer.requests for m in self.members))
        task = distributed.over_ranks(self, task, summed=task)
        before = self.task_usage_before
        task = {k: v + before.get(k, 0.0) for k, v in task.items()}
        if "cache_hits" in task:
            task["cache_hit_rate"] = task["cache_hits"] / max(1.0, task["cache_hits"] + task["cache_misses"])
        self.last_task_usage = task
        return task

    # ---- dev evaluation of the greedy rewrite (PRewrite-I) ----
    def greedy_rewrites(self, member: Member) -> list[str]:
        """The greedy rewrite of the member's instruction (task mode), or one per dev row (input mode)."""
        prompt_ids, _ = self.rewriter_prompts(member, member.dev_rows)
        self.policy.eval()
        with distributed.generation_context(self.trainer, self.policy):
            out = self.rollout_engine.generate(
                prompt_ids, num_generations=1, max_new_tokens=self.algo["max_completion_length"], do_sample=False
            )
        self.policy.train()
        return out.texts

    def score_on_dev(self, member: Member, rewrites: list[str]) -> dict[str, float]:
        """{"reward": ..., <metric>: ...} on the member's dev rows of one instruction for every row, or
        (input mode, one rewrite per row) of the rows' own rewrites, as one sample."""
        rows = member.dev_rows
        scores = member.scorer.score_groups([[(rewrites[i % len(rewrites)], row) for i, row in enumerate(rows)]])
        return {"reward": _nan(scores.rewards[0])} | {name: _nan(vals[0]) for name, vals in scores.metrics.items()}

    def _score_or_outage(self, member: Member, rewrites: list[str]) -> dict[str, float] | TaskModelUnavailable:
        try:
            return self.score_on_dev(member, rewrites)
        except TaskModelUnavailable as e:  # returned, so rank zero's broadcast still reaches the others
            return e

    def score_members(self, split: str, rewrites: list[list[str]]) -> tuple[dict[str, float], list[dict]]:
        """Each member's dev scores of its rewrites, scored once, on rank zero, so every rank agrees on the
        best, the export and early stopping: the scores (a mixture's: the members' mean, and each member's
        under `<task>/`) and the rewrites table's rows (a mixture's: the mean's, then one per member)."""
        per_member = distributed.on_rank_zero(
            self.trainer, lambda: [self._score_or_outage(m, r) for m, r in zip(self.members, rewrites, strict=True)]
        )
        for scores in per_member:
            if isinstance(scores, TaskModelUnavailable):
                raise scores  # on every rank
        step = self.rollout_step if split == "dev" else 0
        per_input = split == "dev" and self.rewrite_mode == "input"  # the table shows the first row's rewrite
        rows = [
            {"step": step, "split": split, "rewrite": texts[0]}
            | self.row_context(m, m.dev_rows[0] if per_input else None)
            | scores
            for m, texts, scores in zip(self.members, rewrites, per_member, strict=True)
        ]
        if len(self.members) == 1:
            return per_member[0], rows
        mean = {k: float(np.mean([s[k] for s in per_member])) for k in per_member[0]}
        named = {f"{m.task.name}/{k}": v for m, s in zip(self.members, per_member, strict=True) for k, v in s.items()}
        return mean | named, [{"step": step, "split": split, "rewrite": None, **mean}] + [
            r | {"split": f"{split}/{r['task']}"} for r in rows
        ]

    def evaluate_dev(self) -> dict[str, float]:
        """Score the greedy rewrites (PRewrite-I) on the fixed dev rows and log them; when they beat every
        earlier evaluation on `monitor`, keep them as the best and export the rewriter."""
        rewrites = [self.greedy_rewrites(m) for m in self.members]  # on every rank: a sharded policy generates together
        rewrites = distributed.on_rank_zero(self.trainer, lambda: rewrites)
        scores, rows = self.score_members("dev", rewrites)
        requests = self.task_usage()["requests"]  # spent so far, this evaluation included: x of a budget curve
        self.log_to_loggers({f"dev/{k}": v for k, v in scores.items()} | {"dev/task_llm_requests": requests})
        self.rewrite_rows += [r | {"task_llm_requests": requests} for r in rows]
        score = scores[self.monitor]
        if self.best is None or score > self.best["score"]:
            self.best = {"step": self.rollout_step, "score": score, "rewrite": self.best_text(rewrites)}
            if len(self.members) > 1 and self.rewrite_mode == "task":
                self.best["rewrites"] = {m.task.name: r[0] for m, r in zip(self.members, rewrites, strict=True)}
            if self.export_dir:
                state_dict = distributed.full_state_dict(self.trainer, self.policy)  # every rank gathers
                if self.trainer.is_global_zero:
                    self.save_rewriter(self.export_dir, state_dict)
                self.trainer.strategy.barrier()
        return scores

    def best_text(self, rewrites: list[list[str]]) -> str | None:
        """The one instruction an evaluation hands over: the single task's greedy rewrite; none when the
        rewriter itself is the product (a mixture's rewrites are per task, input mode's per input)."""
        return rewrites[0][0] if len(self.members) == 1 and self.rewrite_mode == "task" else None

    def save_rewriter(self, path: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A plain Hugging Face folder (policy + tokenizer) plus prewrite.json, which records what
        `prewrite.rewrite` and `prewrite.evaluate` need to use it the way it was trained.
        `state_dict`: the full weights of a sharded policy (distributed.full_state_dict)."""
        model_zoo.plain_model(self.policy).save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)
        names = [m.task.name for m in self.members]
        info = {"task": names[0] if len(names) == 1 else "mixture", "trained_on": names}
        info |= {"instruction": self.members[0].instruction if len(names) == 1 else None}
        info |= {"meta_prompt": self.meta_prompt, "rewrite_mode": self.rewrite_mode}
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
            **self.algorithm.state_dict(),  # PPO's kl_coef (None for GRPO)
            "skipped_updates": self.skipped_updates,
            "skipped_in_a_row": self.skipped_in_a_row,
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
        self.algorithm.load_state_dict(state)
        self.skipped_updates = state.get("skipped_updates", 0)
        self.skipped_in_a_row = state.get("skipped_in_a_row", [])
        self.resumed = True

    def on_train_start(self) -> None:
        if self.resumed:  # step 0 was evaluated and logged before the checkpoint
            if self.global_rank < len(self._rng_to_restore):  # a rank new to the run keeps its fresh seed
                _set_rng_state(self._rng_to_restore[self.global_rank])
            self.rollout_engine.sync(self.policy)  # an engine with its own weights still has the base ones
            return
        # Step 0 of the dev curve: the initial instruction and the untrained rewriter's greedy rewrite,
        # under the same precision context as the later validation steps.
        initial, rows = self.score_members("initial", [[m.instruction] for m in self.members])
        self.log_to_loggers({f"dev/initial_instruction/{k}": v for k, v in initial.items()})
        self.rewrite_rows += rows
        with self.trainer.precision_plugin.val_step_context():
            self.evaluate_dev()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # a stop here leaves Lightning's validation unfinished; a resume runs it again
        self.stop_point()
        try:
            scores = self.evaluate_dev()
        except TaskModelUnavailable as e:
            raise faults.TaskModelDown(e) from None
        # for Lightning callbacks (early stopping); the loggers got them from evaluate_dev
        self.log_dict({f"dev/{k}": v for k, v in scores.items()}, batch_size=1, logger=False, sync_dist=True)


def reward_signal(rewards: torch.Tensor, group_size: int, reward_se: float) -> dict[str, float]:
    """How far the differences the advantages are made of rise above sampling noise: the spread of rewards
    within a group (rewrites of one instruction on the same examples) against one rewrite's standard
    error over its example sample (`reward_se`, from the scorer). SNR below ~1 means the group's ranking
    is mostly which examples were drawn. `frac_reward_zero_std` (TRL's name): the share of groups whose
    rewards are all equal, so their advantages are zero and they add nothing to the update."""
    groups = rewards.view(-1, group_size) if len(rewards) % group_size == 0 else rewards.view(1, -1)
    stds = [g[~torch.isnan(g)].std().item() for g in groups if (~torch.isnan(g)).sum() > 1]
    within = sum(stds) / len(stds) if stds else float("nan")
    zero_std = sum(math.isclose(s, 0.0, abs_tol=1e-8) for s in stds) / len(stds) if stds else float("nan")
    snr = within / reward_se if reward_se and reward_se == reward_se else float("nan")
    return {
        "train/reward_std_within_group": within,
        "train/frac_reward_zero_std": zero_std,
        "train/reward_se": reward_se,
        "train/reward_snr": snr,
    }


class PhaseTimer:
    """Wall-clock seconds of the named phases of a training step: `with timer("rollout"): ...` records
    timer.seconds["rollout"]; elapsed() is the time since the timer was made (the whole step)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


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
