"""Training a prompt rewriter, as `python -m prewrite.train` and `prewrite.compare` run it.

Stages (`stages=S`) are an outer loop: each stage builds a fresh module and Trainer from the base
rewriter weights (so optimizer and scheduler start anew too) and rewrites the best rewrite of the
stage before it. A run re-launched in the same folder (`hydra.run.dir=<run folder>`) skips finished
stages and resumes the unfinished one from its last checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import lightning as L
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_only
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from omegaconf import DictConfig

from prewrite import config_check, distributed, faults, fsio, precision, prompt_registry, runs, selection, sweep
from prewrite.backends import build_backends, label_scoring
from prewrite.callbacks import (
    LastCheckpoint,
    RewardDevPlot,
    RewritesTable,
    StopOnSignal,
    SystemMetrics,
    TimeEstimate,
    checkpoint_bytes,
    parameter_bytes,
)
from prewrite.lightning_module import Member, PRewriteModule
from prewrite.report import score_text
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_members

log = logging.getLogger(__name__)


def check_launch(trainer: L.Trainer) -> None:
    """Several processes come from torchrun or SLURM, never from Lightning re-running the command
    line for each extra rank: that re-run cannot reproduce a Hydra multirun, and its processes would
    resolve their own run folders."""
    processes = trainer.num_devices * trainer.num_nodes
    if processes > 1 and not trainer.strategy.cluster_environment.creates_processes_externally:
        raise RuntimeError(
            f"{processes} processes (hardware.devices x hardware.num_nodes): launch them with torchrun"
            " (torchrun --nproc_per_node=<devices> -m prewrite.train ...) or SLURM, see README, Scaling"
        )


def plan(cfg: DictConfig, members: list[Member], resumed: bool) -> str:
    """What a training is about to do, printed before it starts (its duration follows after the first step)."""
    algo = cfg.algorithm
    chosen = "; ".join(f"{k}={v}" for k, v in (cfg.get("precision_auto") or {}).items())
    tasks = [m.task for m in members]
    constrained = [label_scoring(cfg.task_backend, t) for t in tasks]
    label = "read as the likeliest label (constrained)"
    if cfg.task_backend.get("content_free_inputs"):
        label += f", calibrated on content-free inputs {list(cfg.task_backend.content_free_inputs)}"
    answers = label if all(constrained) else "decoded"
    if any(constrained) and not all(constrained):
        answers = f"{label} on classification tasks, else decoded"
    what = ", ".join(f"{t.name} ({t.kind}) from {m.instruction!r}" for t, m in zip(tasks, members, strict=True))
    if len(members) > 1:
        what = f"a mixture ({cfg.task.sampling}) of {what}"
    if cfg.get("rewrite_mode", "task") == "input":
        groups = f"{cfg.examples_per_step} train examples x {algo.num_generations} rewrites of each, per input"
        dev = "the greedy rewrite of each dev row scored on it, over"
    else:
        groups = f"{algo.num_generations} rewrites x {cfg.examples_per_step} train examples"
        dev = "the greedy rewrite scored on"
    return (
        f"{'Resuming' if resumed else 'Training'} the rewriter {cfg.rewriter.model_name_or_path} with "
        f"{algo.name.upper()} on {what}, reward {list(cfg.reward.reward_funcs)}, the task model's answer "
        f"{answers}: {cfg.steps} steps of {groups}, {dev} {sum(len(m.dev_rows) for m in members)} dev rows "
        f"every {cfg.eval_every} steps; precision {cfg.hardware.precision}" + (f" ({chosen})" if chosen else "")
    )


def fit_stage(cfg: DictConfig, members: list[Member], run_dir: Path, seed: int, tags: dict[str, str]) -> dict:
    """One training (one stage) in `run_dir`; returns its best dev evaluation {step, score, rewrite}
    (`rewrite` is None when the rewriter itself is the product: a mixture, or per-input rewrites)."""
    if (run_dir / runs.RESULT_FILE).exists():  # finished before a resume
        return json.loads((run_dir / runs.RESULT_FILE).read_text())
    faults.raise_if_requested()  # asked to stop before this stage began: nothing of it to save
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = runs.checkpoint_to_resume(cfg, run_dir)
    L.seed_everything(seed, workers=True)  # the same on every rank: what the module initialises must agree
    export_dir = run_dir / "rewriter"
    module = PRewriteModule.from_config(cfg, members, seed=seed, export_dir=str(export_dir))
    logger = False
    callbacks: list[L.Callback] = [RewritesTable(str(run_dir)), RewardDevPlot(str(run_dir)), StopOnSignal()]
    callbacks.append(TimeEstimate(cfg.steps, cfg.eval_every))
    # One MLflow run per training: only rank zero has a logger (the others would also open the store,
    # racing to create it); rank_zero_only.rank comes from the launcher's environment (RANK, SLURM_PROCID).
    if cfg.logger.get("_target_") and rank_zero_only.rank == 0:
        run_id_file = (ckpt.parent.parent if ckpt else run_dir) / runs.RUN_ID_FILE
        resumed_id = run_id_file.read_text().strip() if ckpt and run_id_file.exists() else None
        tags = dict(tags)
        run_name = tags.pop(MLFLOW_RUN_NAME, cfg.logger.run_name)  # as a tag Lightning would overwrite it
        logger = instantiate(cfg.logger, run_id=resumed_id, run_name=run_name, tags=tags or None)
        if resumed_id is None and hasattr(logger, "run_id"):
            fsio.atomic_write_text(run_dir / runs.RUN_ID_FILE, logger.run_id)
            runs.log_config_to_mlflow(logger.experiment, logger.run_id, cfg)
        if cfg.system_metrics_interval_s:
            callbacks.append(SystemMetrics(cfg.system_metrics_interval_s))
    if cfg.save_checkpoints:
        callbacks.append(LastCheckpoint(str(run_dir / runs.CHECKPOINT_DIR), every_n_steps=cfg.save_every))
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(cfg.optimized_metric, patience=cfg.early_stopping_patience, mode="max"))
    callbacks += [instantiate(c) for c in cfg.callbacks]
    hardware = instantiate(cfg.hardware, _convert_="all")  # the strategy: a name or a configured object
    trainer = L.Trainer(**cfg.trainer, **hardware, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
    check_launch(trainer)
    if trainer.world_size > 1:  # each rank its own sampling stream, or every rank would roll out the same rewrites
        L.seed_everything(distributed.rank_seed(seed, trainer.global_rank), workers=True)
    if trainer.is_global_zero:
        warn_if_run_may_not_fit(cfg, module, run_dir)
        print(plan(cfg, members, resumed=ckpt is not None), flush=True)
    trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)

    best = module.best or {"score": float("nan"), "step": None, "rewrite": None}
    task_name = members[0].task.name if len(members) == 1 else cfg.task.name
    instruction = "\n".join(m.instruction if len(members) == 1 else f"{m.task.name}: {m.instruction}" for m in members)
    # The initial instruction competes too: a user is never handed a rewrite that did worse on dev.
    initial_dev = next(r for r in module.rewrite_rows if r["split"] == "initial")[module.monitor]
    best["initial_score"] = initial_dev
    best["selected"], best["selected_is_initial"] = selection.or_initial(
        instruction, initial_dev, best["rewrite"], best["score"]
    )
    if trainer.is_global_zero:
        if logger:
            # the run's objective (what train() returns), one number a sweep's runs compare on
            objective = sweep.objective_metric(cfg.optimized_metric)
            logger.experiment.log_metric(logger.run_id, objective, best["score"], step=best["step"] or 0)
            selected = "initial" if best["selected_is_initial"] else "rewrite"
            logger.experiment.set_tag(logger.run_id, "prewrite.selected", selected)
            chosen_dev = initial_dev if best["selected_is_initial"] else best["score"]
            logger.experiment.log_metric(logger.run_id, f"dev/selected/{module.monitor}", chosen_dev)
            if best["rewrite"] is not None:
                logger.experiment.set_tag(logger.run_id, "prewrite.best_rewrite", best["rewrite"][:MAX_TAG_VAL_LENGTH])
            n_dev = sum(len(m.dev_rows) for m in members)
            note = run_description(cfg, task_name, module.monitor, n_dev, instruction, best)
            logger.experiment.set_tag(logger.run_id, MLFLOW_RUN_NOTE, note)
            if cfg.register_prompts and len(members) == 1:  # a prompt per task: a mixture's rewrites are not one
                _register_prompts(cfg, members[0], module.monitor, best, logger.run_id)
        if logger and cfg.log_rewriter_to_mlflow and export_dir.exists():
            log_rewriter(logger, export_dir)
        fsio.atomic_write_text(run_dir / runs.RESULT_FILE, json.dumps(best))
        if not cfg.keep_checkpoint_after_fit and (run_dir / runs.CHECKPOINT_DIR).exists():
            shutil.rmtree(run_dir / runs.CHECKPOINT_DIR)  # a finished stage is never resumed: its result file stands
        found = best["rewrite"] or best.get("rewrites") or f"{module.rewrite_mode}-level rewrites"
        print(f"\nBest {cfg.optimized_metric}: {best['score']:.4f} at step {best['step']}: {found!r}")
        if best["selected_is_initial"]:
            print(
                f"No rewrite beat the initial instruction on dev ({cfg.optimized_metric} {initial_dev:.4f}): "
                f"keep {instruction!r}. (MLflow tag prewrite.selected=initial)"
            )
        else:
            print(f"It beats the initial instruction on dev ({initial_dev:.4f}).")
        print(f"Rewriter (best on dev): {os.path.relpath(export_dir)}")
        if logger:
            print(f"MLflow run {logger.run_id} in experiment {logger._experiment_name!r}")
    return best


def warn_if_run_may_not_fit(cfg: DictConfig, module: PRewriteModule, run_dir: Path) -> None:
    """Before training: will the run's largest writes fit? (A full disk at the end fails nothing done, but
    loses the checkpoint or the MLflow copy of the rewriter.)"""
    weights = parameter_bytes(module.policy)
    parts = {"the rewriter": weights}
    if cfg.save_checkpoints:
        parts["a checkpoint"] = checkpoint_bytes(module)
    if cfg.log_rewriter_to_mlflow and cfg.logger.get("_target_"):
        parts["its MLflow copy"] = weights  # a local store: the same disk
    fsio.warn_if_short_of_space(run_dir, sum(parts.values()), "this run (" + ", ".join(parts) + ")")


def log_rewriter(logger, export_dir: Path) -> None:
    """The best-on-dev rewriter as the run's `rewriter` artifact. A copy that fails (a full disk, an artifact
    store out of reach) does not fail a finished training: the rewriter is in its run folder, and the run's
    tag says so."""
    try:
        logger.experiment.log_artifacts(logger.run_id, str(export_dir), "rewriter")
    except (OSError, MlflowException) as e:
        log.error("Could not copy the rewriter to MLflow run %s (%s); it is in %s", logger.run_id, e, export_dir)
        logger.experiment.set_tag(logger.run_id, "prewrite.rewriter_artifact", f"not logged; in {export_dir}")


def run_description(cfg: DictConfig, task_name: str, metric: str, n_dev: int, instruction: str, best: dict) -> str:
    """The run's description in the MLflow UI (markdown): the initial instruction against the best
    rewrite on dev, and which one the run hands the user."""

    def quoted(text: str) -> str:  # both instructions must fit one tag value
        text = text if len(text) <= 3000 else text[:3000] + " [...]"
        return "\n".join(f"> {line}" for line in text.splitlines() or [""])

    lines = [
        f"**{task_name}**, {cfg.algorithm.name.upper()}, seed {cfg.seed}, {cfg.steps} steps; "
        f"dev {metric} on {n_dev} rows.",
        "",
        f"Initial instruction: dev {metric} **{score_text(best['initial_score'])}**",
        "",
        quoted(instruction),
    ]
    kept = "the initial instruction (no rewrite beat it on dev)" if best["selected_is_initial"] else "the rewrite"
    if best["rewrite"] is not None:
        header = f"Best rewrite (step {best['step']}): dev {metric} **{score_text(best['score'])}**"
        lines += ["", header, "", quoted(best["rewrite"]), "", f"Selected: {kept}."]
    elif best["step"] is not None:  # a mixture's rewrites (one per task) or per-input rewrites
        per_task = "".join(f"\n\n{name}:\n\n{quoted(text)}" for name, text in best.get("rewrites", {}).items())
        header = f"Best rewriter (step {best['step']}, {cfg.get('rewrite_mode', 'task')}-level rewrites): dev {metric}"
        kept = "the initial instruction (the rewriter lost on dev)" if best["selected_is_initial"] else "the rewriter"
        lines += ["", f"{header} **{score_text(best['score'])}**{per_task}", "", f"Selected: {kept}."]
    if cfg.register_prompts:
        uri = f"prompts:/{prompt_registry.prompt_name(task_name)}@{prompt_registry.ALIAS}"
        lines += ["", f"Registered in the Prompt Registry; the best on dev across runs: `{uri}`."]
    return "\n".join(lines)


def _register_prompts(cfg, member: Member, metric: str, best: dict, run_id: str):
    """The initial instruction (stage 0's) and the best rewrite on dev as versions of the task's prompt."""
    task, dev_rows, instruction = member.task, member.dev_rows, member.instruction
    where = f"training run {run_id}"
    chosen = []
    if instruction == task.instruction:  # a later stage starts from the previous stage's best, registered then
        origin = f"initial instruction, scored on dev by {where}"
        chosen.append(prompt_registry.Chosen(instruction, "initial", run_id, origin, best["initial_score"], cfg.seed))
    if best["rewrite"] is not None:
        origin = f"best-on-dev greedy rewrite of {where}, step {best['step']}"
        chosen.append(prompt_registry.Chosen(best["rewrite"], "train_best", run_id, origin, best["score"], cfg.seed))
    if chosen:
        scored = prompt_registry.scored_on(metric, dev_rows, cfg.task_backend, task)
        prompt_registry.register(cfg.logger.tracking_uri, task.name, chosen, scored)


def train(cfg: DictConfig, tags: dict[str, str] | None = None, backend=None) -> float:
    """Runs the training (all its stages) and returns the best value of `cfg.optimized_metric` on
    dev of the last stage. `tags` go on its MLflow run (the parent run of its stages). `backend`: a
    task-LLM backend already built from `cfg.task_backend` (prewrite.compare reuses one engine)."""
    with faults.stop_on_signals():
        return _train(cfg, tags or {}, backend)


def _train(cfg: DictConfig, tags: dict[str, str], backend) -> float:
    config_check.check_training(cfg)
    run_dir = Path(cfg.paths.run_dir)
    precision.resolve_config(cfg)  # before the settings check: a run's settings are what it computed with
    runs.check_same_settings(run_dir, cfg)
    tasks = load_members(cfg.task)
    backends = [backend] if backend else build_backends(cfg.task_backend, cfg.get("cache"), tasks)
    # A fixed seeded dev subset per task, the same at every evaluation and stage, so dev curves are comparable.
    members = [
        Member(t, RewriteScorer(t, b, cfg.reward.reward_funcs, cfg.reward.reward_weights, report=[t.metric]),
               t.instruction, t.eval_rows("dev", cfg.dev_examples, cfg.seed))
        for t, b in zip(tasks, backends, strict=True)
    ]  # fmt: skip
    if cfg.stages == 1:
        best = fit_stage(cfg, members, run_dir, cfg.seed, tags)
    else:
        client, parent = runs.parent_run(cfg, run_dir, tags | {MLFLOW_RUN_NAME: cfg.logger.run_name})
        with faults.ends_mlflow_run(client, parent):
            for stage in range(cfg.stages):
                tags = {"prewrite.stage": str(stage)}
                if parent:
                    tags |= {MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: f"{cfg.logger.run_name}-stage{stage}"}
                # each stage its own seed stream, so a resumed stage replays exactly
                seed = int(np.random.SeedSequence([cfg.seed, stage]).generate_state(1)[0])
                best = fit_stage(cfg, members, run_dir / f"stage{stage}", seed, tags)
                # the next stage rewrites what this stage handed the user: its best rewrite if it beat the
                # stage's instruction on dev, else that instruction (config_check: one task, task-level)
                members = [dataclasses.replace(members[0], instruction=best["selected"])]
        if parent:
            client.log_metric(parent, cfg.optimized_metric, best["score"])
            client.log_metric(parent, sweep.objective_metric(cfg.optimized_metric), best["score"])
            client.set_terminated(parent, "FINISHED")
    if cfg.logger.get("_target_") and rank_zero_only.rank == 0:
        print(f"Open the UI: make ui   (or: mlflow ui --backend-store-uri {cfg.logger.tracking_uri})")
    return best["score"]
