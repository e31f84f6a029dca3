"""Train a prompt rewriter: `python -m prewrite.train [task=sst2] [reward=accuracy] [key=value ...]`."""

from __future__ import annotations

import logging
import os

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from prewrite.backends import build_backend
from prewrite.callbacks import RewritesTable
from prewrite.module import PRewriteModule
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

log = logging.getLogger(__name__)

MLFLOW_PARAM_MAX = 6000  # MLflow's limit on a param value


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}.")
        else:
            out[key] = str(v)
    return out


def log_config_to_mlflow(logger: MLFlowLogger, cfg: DictConfig) -> None:
    """The flattened resolved config as params (full values, unlike Lightning's 250-char cut) and
    the resolved YAML as an artifact."""
    from mlflow.entities import Param

    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = [Param(k, v[:MLFLOW_PARAM_MAX]) for k, v in flatten(resolved).items()]
    for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        logger.experiment.log_batch(logger.run_id, params=params[i : i + 100])
    logger.experiment.log_text(logger.run_id, OmegaConf.to_yaml(resolved), "config.yaml")


def train(cfg: DictConfig) -> float:
    """Runs one training and returns the best value of `cfg.optimized_metric` seen on dev."""
    L.seed_everything(cfg.seed, workers=True)
    task = load_task(cfg.task)
    backend = build_backend(cfg.task_backend, cfg.get("cache"), task)
    scorer = RewriteScorer(task, backend, cfg.reward.reward_funcs, cfg.reward.reward_weights, report=[cfg.task.metric])
    run_dir = cfg.paths.run_dir
    export_dir = os.path.join(run_dir, "rewriter")
    module = PRewriteModule(
        task=task,
        scorer=scorer,
        rewriter=OmegaConf.to_container(cfg.rewriter, resolve=True),
        algorithm=OmegaConf.to_container(cfg.algorithm, resolve=True),
        meta_prompt=cfg.meta_prompt,
        steps=cfg.steps,
        examples_per_step=cfg.examples_per_step,
        dev_examples=cfg.dev_examples,
        seed=cfg.seed,
        monitor=cfg.optimized_metric.removeprefix("dev/"),
        export_dir=export_dir,
    )
    logger = instantiate(cfg.logger) if cfg.logger.get("_target_") else False
    if isinstance(logger, MLFlowLogger):
        log_config_to_mlflow(logger, cfg)
    callbacks: list[L.Callback] = [RewritesTable(run_dir)]
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(cfg.optimized_metric, patience=cfg.early_stopping_patience, mode="max"))
    trainer = L.Trainer(**cfg.trainer, **cfg.hardware, logger=logger, callbacks=callbacks, default_root_dir=run_dir)
    trainer.fit(module)

    best = module.best or {"score": float("nan"), "step": None, "rewrite": None}
    if trainer.is_global_zero:
        if isinstance(logger, MLFlowLogger) and cfg.log_rewriter_to_mlflow:
            logger.experiment.log_artifacts(logger.run_id, export_dir, "rewriter")
        print(f"\nBest {cfg.optimized_metric}: {best['score']:.4f} at step {best['step']}: {best['rewrite']!r}")
        print(f"Rewriter (best on dev): {os.path.relpath(export_dir)}")
        if isinstance(logger, MLFlowLogger):
            print(f"MLflow run {logger.run_id} in experiment {logger._experiment_name!r}")
            print(f"Open the UI: make ui   (or: mlflow ui --backend-store-uri {cfg.paths.mlflow_tracking_uri})")
    return best["score"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    # log_table downloads the table before each append; its progress bar would clutter the console.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    log.info("Run folder: %s", HydraConfig.get().runtime.output_dir)
    return train(cfg)


if __name__ == "__main__":
    main()
