"""GRPO step time: ours (PRewriteModule under a Lightning Trainer) against TRL's GRPOTrainer.

The identical setup on both sides: the embedded SmolLM2-135M-Instruct as the policy (fp32 weights;
`hardware.precision` as resolved for this machine on both: bf16 autocast where bf16 is native, our
`bf16-mixed` and TRL's `bf16=True`, else fp32 on both), one prompt (PRewrite's meta prompt
around SST-2's initial instruction, chat template), `num_generations` rewrites of at most
`max_completion_length` tokens at temperature 1, beta 0.04 (a reference model on both sides), the
dapo loss, the default learning rate on both, one policy epoch per rollout, and the same reward: a
RewriteScorer (the hf task backend, accuracy on the step's `examples_per_step` SST-2 train rows,
response cache off) called by both (the default; `task_backend=...` changes it for both). Runs alternate inside one
invocation (ours, TRL, TRL, ours, ...), each in a fresh process and `--steps` steps long, repetition r
with seed r on both sides; the first step of each run is warm-up and left out. Reported: median step
time per side over all timed steps, the ratio ours / TRL, where the time goes, and the mean rewrite
length (longer rewrites make longer task prompts, so a costlier reward).

    python experiments/bench_step.py --steps 4 --repeats 3 --out experiments/bench_step.json
    python experiments/bench_step.py --steps 4 --repeats 3 --ours rollout=vllm   # our vLLM rollouts (make setup-vllm)
    python experiments/bench_step.py ... --trl use_vllm=true vllm_mode=colocate  # TRL's own vLLM rollouts
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from prewrite import model_zoo, precision
from prewrite.backends import build_backend
from prewrite.lightning_module import Member, PRewriteModule
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


class MemoryLogger(Logger):
    """Keeps what the module logs (its train/time/* breakdown among it) in memory."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict[str, float]] = []

    name, version, experiment = "memory", 0, None

    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    precision.resolve_config(cfg)  # as prewrite.train does; TRL's side follows the same choice
    return cfg


def run_ours(cfg, scorer: RewriteScorer, task, steps: int) -> list[dict[str, float]]:
    # dev: one row, for the step-0 dev evaluation (not timed)
    member = Member(task, scorer, task.instruction, task.eval_rows("dev", 1, cfg.seed))
    module = PRewriteModule.from_config(cfg, [member], steps=steps)
    logger = MemoryLogger()
    trainer_args = OmegaConf.to_container(cfg.trainer) | {"val_check_interval": steps, "enable_progress_bar": False}
    trainer = L.Trainer(**trainer_args, **cfg.hardware, logger=logger, limit_val_batches=0)
    trainer.fit(module)
    return [
        {k: r[f"train/time/{k}_s"] for k in ("step", "rollout", "reward", "update")}
        | {"completion_length": r["train/completion_length"]}
        for r in logger.rows
        if "train/time/step_s" in r
    ]


def run_trl(cfg, scorer: RewriteScorer, task, steps: int, out_dir: str, trl_args: dict) -> list[dict[str, float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    algo = cfg.algorithm
    prompt = [{"role": "user", "content": cfg.meta_prompt.format(instruction=task.instruction)}]
    dataset = Dataset.from_list([{"prompt": prompt}] * (algo.num_generations * steps))
    times: list[dict[str, float]] = []
    step = {"n": 0}

    def task_reward(completions, **_):
        start = time.perf_counter()
        rows = task.sample("train", cfg.examples_per_step, seed=[cfg.seed, step["n"]])
        rewards = scorer([c[0]["content"].strip() for c in completions], rows).rewards
        times[-1]["reward"] = time.perf_counter() - start
        return rewards

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            times.append({"start": time.perf_counter()})

        def on_step_end(self, args, state, control, **kw):
            times[-1]["step"] = time.perf_counter() - times[-1].pop("start")
            step["n"] += 1

    args = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=algo.num_generations,
        num_generations=algo.num_generations,
        max_completion_length=algo.max_completion_length,
        temperature=algo.temperature,
        beta=algo.beta,
        loss_type=algo.loss_type,
        learning_rate=algo.learning_rate,
        max_grad_norm=algo.max_grad_norm,
        max_steps=steps,
        bf16=cfg.hardware.precision == "bf16-mixed",
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=cfg.seed,
        disable_tqdm=True,
        **trl_args,
    )
    path = cfg.rewriter.model_name_or_path
    trainer = GRPOTrainer(
        model=model_zoo.load_model(path),
        reward_funcs=task_reward,
        args=args,
        train_dataset=dataset,
        processing_class=model_zoo.load_tokenizer(path),
        callbacks=[Timer()],
    )
    generate = trainer._generate_and_score_completions

    def timed_generate(*a, **kw):  # rollout + reference log-probs + reward, as TRL groups them
        start = time.perf_counter()
        out = generate(*a, **kw)
        times[-1]["generate_and_score"] = time.perf_counter() - start
        return out

    trainer._generate_and_score_completions = timed_generate
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return [
        {
            "step": t["step"],
            "rollout": t["generate_and_score"] - t["reward"],  # includes TRL's reference log-probs
            "reward": t["reward"],
            "update": t["step"] - t["generate_and_score"],
            "completion_length": length,
        }
        for t, length in zip(times, lengths, strict=True)
    ]


def one_run(side: str, overrides: list[str], steps: int, trl_args: dict) -> list[dict[str, float]]:
    """One run of one side, in a fresh process (see main), with its own task model and scorer."""
    cfg = config(["logger=none", "cache.enabled=false", *overrides])
    task = load_task(cfg.task)
    backend = build_backend(cfg.task_backend, cfg.cache, task)
    scorer = RewriteScorer(task, backend, cfg.reward.reward_funcs, cfg.reward.reward_weights)
    torch.manual_seed(cfg.seed)
    if side == "ours":
        return run_ours(cfg, scorer, task, steps)
    with tempfile.TemporaryDirectory() as tmp:
        return run_trl(cfg, scorer, task, steps, tmp, trl_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides for both sides")
    parser.add_argument("--ours", nargs="*", default=[], help="config overrides for our side only, e.g. rollout=vllm")
    parser.add_argument(
        "--trl", nargs="*", default=[], metavar="KEY=VALUE",
        help="GRPOConfig arguments for TRL's side only (YAML values), e.g. use_vllm=true vllm_mode=colocate",
    )  # fmt: skip
    args = parser.parse_args()
    trl_args = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.trl)}

    overrides = {"ours": [*args.overrides, *args.ours], "trl": args.overrides}
    runs: dict[str, list[list[dict[str, float]]]] = {"ours": [], "trl": []}
    # Each run in its own process: a vLLM engine (rollout=vllm) changes the process's threading and
    # holds memory after its run, which would slow or break whatever ran next in the same process.
    # (ProcessPoolExecutor's workers, unlike multiprocessing.Pool's, are not daemons: they may start the
    # engine-core process of task_backend.multiprocessing=true.)
    spawn = multiprocessing.get_context("spawn")
    for rep in range(args.repeats):
        for side in ("ours", "trl") if rep % 2 == 0 else ("trl", "ours"):
            # Repetition r runs seed r on both sides: the repetitions sample different rewrites (one seed
            # would score the same rewrites in every run of a side, and their lengths drive the reward time).
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                steps = pool.submit(one_run, side, [*overrides[side], f"seed={rep}"], args.steps, trl_args).result()
            runs[side].append(steps)
            print(f"rep {rep} {side}: " + ", ".join(f"{s['step']:.1f}s" for s in steps), flush=True)

    summary = {}
    for side, reps in runs.items():
        timed = [s for steps in reps for s in steps[1:]]
        keys = ("step", "rollout", "reward", "update", "completion_length")
        summary[side] = {k: statistics.median(s[k] for s in timed) for k in keys}
    summary["ratio_ours_over_trl"] = summary["ours"]["step"] / summary["trl"]["step"]
    print(json.dumps(summary, indent=2))
    if args.out:
        machine = {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__}
        record = {"args": vars(args), "machine": machine, "runs": runs, "summary": summary}
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
