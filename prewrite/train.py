"""Train a prompt rewriter: `python -m prewrite.train [task=sst2] [reward=accuracy] [key=value ...]`.

Stages (`stages=S`) are an outer loop: each stage builds a fresh module and Trainer from the base
rewriter weights (so optimizer and scheduler start anew too) and rewrites the best rewrite of the
stage before it. A run re-launched in the same folder (`hydra.run.dir=<run folder>`) skips finished
stages and resumes the unfinished one from its last checkpoint, in the same MLflow run.
In a multirun each job runs through prewrite.sweep.run_job: a child of the sweep's MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import lightning as L
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from omegaconf import DictConfig, OmegaConf

from prewrite import config_check, distributed, faults, fsio, precision, prompt_registry, search, sweep
from prewrite.backends import build_backend
from prewrite.callbacks import (
    LastCheckpoint,
    RewardDevPlot,
    RewritesTable,
    StopOnSignal,
    SystemMetrics,
    TimeEstimate,
)
from prewrite.loggers import mlflow_experiment
from prewrite.module import PRewriteModule
from prewrite.rewards import RewriteScorer
from prewrite.tasks import Task, load_task

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"  # in a run (or stage) folder: the MLflow run a resume continues
RESULT_FILE = "result.json"  # in a run (or stage) folder: written when it finished
SETTINGS_FILE = "settings.json"  # in a run folder: the settings a re-launch in that folder must repeat
# What a re-launch may change without changing what the run computes: where files and logs go, how
# progress shows, which checkpoint to resume, the response cache (it serves only identical answers), and
# prewrite.compare's list of seeds and results folder (a seed's results do not depend on the others).
# A multirun's exit code, the non-finite patience and the Prompt Registry switch (new keys, absent from older
# folders) change no result.
RELAUNCH_MAY_CHANGE = (
    "paths", "logger", "ckpt_path", "cache", "system_metrics_interval_s", "trainer.enable_progress_bar",
    "seeds", "results_dir", "multirun_fails_on_job_error", "max_skipped_updates_in_a_row", "register_prompts",
)  # fmt: skip


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}.")
        else:
            out[key] = str(v)
    return out


def log_config_to_mlflow(client: MlflowClient, run_id: str, cfg: DictConfig) -> None:
    """The flattened resolved config as params (full values, unlike Lightning's 250-char cut) and
    the resolved YAML as an artifact."""
    from mlflow.entities import Param

    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten(resolved).items()]
    for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_text(run_id, OmegaConf.to_yaml(resolved), "config.yaml")


def _shorten(value: str | None, limit: int = 60) -> str:
    return repr(value if value is None or len(value) <= limit else value[: limit - 3] + "...")


def check_same_settings(folder: Path, cfg: DictConfig) -> None:
    """A re-launch in a run folder continues what it finds there (a checkpoint, finished stages or seeds),
    so it must use the settings that made it, or the run would silently mix two configurations. The
    first launch records the resolved settings in `SETTINGS_FILE`; a later one with other settings stops
    here, before any work, naming what differs."""
    resolved = flatten(OmegaConf.to_container(cfg, resolve=True))
    settings = {
        k: v for k, v in resolved.items() if not any(k == p or k.startswith(f"{p}.") for p in RELAUNCH_MAY_CHANGE)
    }
    path = folder / SETTINGS_FILE
    if not path.exists():
        if rank_zero_only.rank == 0:
            fsio.atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True))
        return
    before = json.loads(path.read_text())
    changed = sorted(k for k in before.keys() | settings.keys() if before.get(k) != settings.get(k))
    if changed:
        shown = "; ".join(f"{k}: {_shorten(before.get(k))} -> {_shorten(settings.get(k))}" for k in changed)
        raise ValueError(
            f"{folder} holds a run made with other settings ({shown}). To resume it, re-launch with the "
            f"settings recorded in {path}; to start a new run, use a new folder (drop hydra.run.dir)."
        )


def _checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """ckpt_path: null = the run folder's last checkpoint if there is one; "last" = that, required;
    else a checkpoint file."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.ckpt_path is None:
        return last if last.exists() else None
    path = last if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if not path.exists():
        hint = " (re-run in the killed run's folder: hydra.run.dir=<its folder>)" if cfg.ckpt_path == "last" else ""
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no checkpoint at {path}{hint}")
    return path


def _check_launch(trainer: L.Trainer) -> None:
    """Several processes come from torchrun or SLURM, never from Lightning re-running the command
    line for each extra rank: that re-run cannot reproduce a Hydra multirun, and its processes would
    resolve their own run folders."""
    processes = trainer.num_devices * trainer.num_nodes
    if processes > 1 and not trainer.strategy.cluster_environment.creates_processes_externally:
        raise RuntimeError(
            f"{processes} processes (hardware.devices x hardware.num_nodes): launch them with torchrun"
            " (torchrun --nproc_per_node=<devices> -m prewrite.train ...) or SLURM, see README, Scaling"
        )


def plan(cfg: DictConfig, task: Task, instruction: str, resumed: bool) -> str:
    """What a training is about to do, printed before it starts (its duration follows after the first step)."""
    algo = cfg.algorithm
    chosen = "; ".join(f"{k}={v}" for k, v in (cfg.get("precision_auto") or {}).items())
    return (
        f"{'Resuming' if resumed else 'Training'} the rewriter {cfg.rewriter.model_name_or_path} with "
        f"{algo.name.upper()} on {task.name} ({task.kind}, reward {list(cfg.reward.reward_funcs)}) from "
        f"{instruction!r}: {cfg.steps} steps of {algo.num_generations} rewrites x {cfg.examples_per_step} train "
        f"examples, the greedy rewrite scored on {len(task.eval_rows('dev', cfg.dev_examples, cfg.seed))} dev rows "
        f"every {cfg.eval_every} steps; precision {cfg.hardware.precision}" + (f" ({chosen})" if chosen else "")
    )


def fit_stage(
    cfg: DictConfig,
    task: Task,
    scorer: RewriteScorer,
    dev_rows: list[dict],
    instruction: str,
    run_dir: Path,
    seed: int,
    tags: dict[str, str],
) -> dict:
    """One training (one stage) in `run_dir`; returns its best dev evaluation {step, score, rewrite}."""
    if (run_dir / RESULT_FILE).exists():  # finished before a resume
        return json.loads((run_dir / RESULT_FILE).read_text())
    faults.raise_if_requested()  # asked to stop before this stage began: nothing of it to save
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint_to_resume(cfg, run_dir)
    L.seed_everything(seed, workers=True)  # the same on every rank: what the module initialises must agree
    export_dir = run_dir / "rewriter"
    module = PRewriteModule.from_config(
        cfg, task, scorer, dev_rows, seed=seed, instruction=instruction, export_dir=str(export_dir)
    )
    logger = False
    callbacks: list[L.Callback] = [RewritesTable(str(run_dir)), RewardDevPlot(str(run_dir)), StopOnSignal()]
    callbacks.append(TimeEstimate(cfg.steps, cfg.eval_every))
    # One MLflow run per training: only rank zero has a logger (the others would also open the store,
    # racing to create it); rank_zero_only.rank comes from the launcher's environment (RANK, SLURM_PROCID).
    if cfg.logger.get("_target_") and rank_zero_only.rank == 0:
        run_id_file = (ckpt.parent.parent if ckpt else run_dir) / RUN_ID_FILE
        resumed_id = run_id_file.read_text().strip() if ckpt and run_id_file.exists() else None
        tags = dict(tags)
        run_name = tags.pop(MLFLOW_RUN_NAME, cfg.logger.run_name)  # as a tag Lightning would overwrite it
        logger = instantiate(cfg.logger, run_id=resumed_id, run_name=run_name, tags=tags or None)
        if resumed_id is None and hasattr(logger, "run_id"):
            fsio.atomic_write_text(run_dir / RUN_ID_FILE, logger.run_id)
            log_config_to_mlflow(logger.experiment, logger.run_id, cfg)
        if cfg.system_metrics_interval_s:
            callbacks.append(SystemMetrics(cfg.system_metrics_interval_s))
    if cfg.save_checkpoints:
        callbacks.append(LastCheckpoint(str(run_dir / "checkpoints")))
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(cfg.optimized_metric, patience=cfg.early_stopping_patience, mode="max"))
    callbacks += [instantiate(c) for c in cfg.callbacks]
    hardware = instantiate(cfg.hardware, _convert_="all")  # the strategy: a name or a configured object
    trainer = L.Trainer(**cfg.trainer, **hardware, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))
    _check_launch(trainer)
    if trainer.world_size > 1:  # each rank its own sampling stream, or every rank would roll out the same rewrites
        L.seed_everything(distributed.rank_seed(seed, trainer.global_rank), workers=True)
    if trainer.is_global_zero:
        print(plan(cfg, task, instruction, resumed=ckpt is not None), flush=True)
    trainer.fit(module, ckpt_path=str(ckpt) if ckpt else None)

    best = module.best or {"score": float("nan"), "step": None, "rewrite": None}
    # The initial instruction competes too: a user is never handed a rewrite that did worse on dev.
    initial_dev = next(r for r in module.rewrite_rows if r["split"] == "initial")[module.monitor]
    best["initial_score"] = initial_dev
    best["selected"], best["selected_is_initial"] = search.or_initial(
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
            note = run_description(cfg, task.name, module.monitor, len(dev_rows), instruction, best)
            logger.experiment.set_tag(logger.run_id, MLFLOW_RUN_NOTE, note)
            if cfg.register_prompts:
                _register_prompts(cfg, task, module.monitor, dev_rows, instruction, best, logger.run_id)
        if logger and cfg.log_rewriter_to_mlflow and export_dir.exists():
            logger.experiment.log_artifacts(logger.run_id, str(export_dir), "rewriter")
        fsio.atomic_write_text(run_dir / RESULT_FILE, json.dumps(best))
        print(f"\nBest {cfg.optimized_metric}: {best['score']:.4f} at step {best['step']}: {best['rewrite']!r}")
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


def run_description(cfg: DictConfig, task_name: str, metric: str, n_dev: int, instruction: str, best: dict) -> str:
    """The run's description in the MLflow UI (markdown): the initial instruction against the best
    rewrite on dev, and which one the run hands the user."""

    def quoted(text: str) -> str:  # both instructions must fit one tag value
        text = text if len(text) <= 3000 else text[:3000] + " [...]"
        return "\n".join(f"> {line}" for line in text.splitlines() or [""])

    def score(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    lines = [
        f"**{task_name}**, {cfg.algorithm.name.upper()}, seed {cfg.seed}, {cfg.steps} steps; "
        f"dev {metric} on {n_dev} rows.",
        "",
        f"Initial instruction: dev {metric} **{score(best['initial_score'])}**",
        "",
        quoted(instruction),
    ]
    if best["rewrite"] is not None:
        kept = "the initial instruction (no rewrite beat it on dev)" if best["selected_is_initial"] else "the rewrite"
        header = f"Best rewrite (step {best['step']}): dev {metric} **{score(best['score'])}**"
        lines += ["", header, "", quoted(best["rewrite"]), "", f"Selected: {kept}."]
    if cfg.register_prompts:
        uri = f"prompts:/{prompt_registry.prompt_name(task_name)}@{prompt_registry.ALIAS}"
        lines += ["", f"Registered in the Prompt Registry; the best on dev across runs: `{uri}`."]
    return "\n".join(lines)


def _register_prompts(cfg, task: Task, metric: str, dev_rows: list[dict], instruction: str, best: dict, run_id: str):
    """The initial instruction (stage 0's) and the best rewrite on dev as versions of the task's prompt."""
    where = f"training run {run_id}"
    chosen = []
    if instruction == task.instruction:  # a later stage starts from the previous stage's best, registered then
        origin = f"initial instruction, scored on dev by {where}"
        chosen.append(prompt_registry.Chosen(instruction, "initial", run_id, origin, best["initial_score"], cfg.seed))
    if best["rewrite"] is not None:
        origin = f"best-on-dev greedy rewrite of {where}, step {best['step']}"
        chosen.append(prompt_registry.Chosen(best["rewrite"], "train_best", run_id, origin, best["score"], cfg.seed))
    if chosen:
        scored = prompt_registry.scored_on(metric, dev_rows, cfg.task_backend)
        prompt_registry.register(cfg.logger.tracking_uri, task.name, chosen, scored)


def _parent_run(cfg: DictConfig, run_dir: Path, tags: dict[str, str]) -> str | None:
    """The MLflow run that holds a multi-stage training's stages as child runs (resumed if it exists);
    None on ranks other than zero, which log nothing."""
    if not cfg.logger.get("_target_") or rank_zero_only.rank != 0:
        return None
    run_id_file = run_dir / RUN_ID_FILE
    if run_id_file.exists():
        return run_id_file.read_text().strip()
    client = MlflowClient(cfg.logger.tracking_uri)
    exp_id = mlflow_experiment(client, cfg.logger)
    run_id = client.create_run(exp_id, tags=tags | {MLFLOW_RUN_NAME: cfg.logger.run_name}).info.run_id
    fsio.atomic_write_text(run_id_file, run_id)
    log_config_to_mlflow(client, run_id, cfg)
    return run_id


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
    check_same_settings(run_dir, cfg)
    task = load_task(cfg.task)
    backend = backend or build_backend(cfg.task_backend, cfg.get("cache"), task)
    scorer = RewriteScorer(task, backend, cfg.reward.reward_funcs, cfg.reward.reward_weights, report=[cfg.task.metric])
    # A fixed seeded dev subset, the same at every evaluation and stage, so dev curves are comparable.
    dev_rows = task.eval_rows("dev", cfg.dev_examples, cfg.seed)
    if cfg.stages == 1:
        best = fit_stage(cfg, task, scorer, dev_rows, task.instruction, run_dir, cfg.seed, tags)
    else:
        parent = _parent_run(cfg, run_dir, tags)
        instruction = task.instruction
        client = MlflowClient(cfg.logger.tracking_uri) if parent else None
        with faults.ends_mlflow_run(client, parent):
            for stage in range(cfg.stages):
                tags = {"prewrite.stage": str(stage)}
                if parent:
                    tags |= {MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: f"{cfg.logger.run_name}-stage{stage}"}
                # each stage its own seed stream, so a resumed stage replays exactly
                seed = int(np.random.SeedSequence([cfg.seed, stage]).generate_state(1)[0])
                best = fit_stage(cfg, task, scorer, dev_rows, instruction, run_dir / f"stage{stage}", seed, tags)
                instruction = best["rewrite"] or instruction  # the next stage rewrites this stage's best
        if parent:
            client.log_metric(parent, cfg.optimized_metric, best["score"])
            client.log_metric(parent, sweep.objective_metric(cfg.optimized_metric), best["score"])
            client.set_terminated(parent, "FINISHED")
    if cfg.logger.get("_target_") and rank_zero_only.rank == 0:
        print(f"Open the UI: make ui   (or: mlflow ui --backend-store-uri {cfg.logger.tracking_uri})")
    return best["score"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # artifact downloads (the MLflow table helpers) would clutter the console with progress bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    log.info("Run folder: %s", HydraConfig.get().runtime.output_dir)
    try:
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # a failed job is recorded and the sweep goes on
            return sweep.run_job(train, cfg)
        return train(cfg)
    except config_check.ConfigError as e:
        raise SystemExit(f"prewrite.train: {e}") from None
    except faults.StopRequested as e:
        faults.exit_for_resume(e, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
