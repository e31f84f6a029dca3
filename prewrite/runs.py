"""Runs on disk and in MLflow, shared by every entry point: the run folder's files, the settings a
re-launch must repeat, the checkpoint a resume continues, and MLflow runs with their config.

A run folder holds `RUN_ID_FILE` (the MLflow run a resume continues), `SETTINGS_FILE` (the settings it
was made with) and, once finished, `RESULT_FILE`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from omegaconf import DictConfig, OmegaConf

from prewrite import fsio
from prewrite.config_check import ConfigError
from prewrite.loggers import mlflow_experiment

RUN_ID = re.compile(r"[0-9a-f]{32}")  # how MLflow names its runs (uuid4 hex)
RUN_ID_FILE = "mlflow_run_id"  # in a run (or stage) folder: the MLflow run a resume continues
RESULT_FILE = "result.json"  # in a run (or stage) folder: written when it finished
CHECKPOINT_DIR = "checkpoints"  # in a run (or stage) folder: last.ckpt, what a resume starts from
SETTINGS_FILE = "settings.json"  # in a run folder: the settings a re-launch in that folder must repeat
# What a re-launch may change without changing what the run computes: where files and logs go, how
# progress shows, which checkpoint to resume, the response cache (it serves only identical answers), and
# prewrite.compare's list of seeds and results folder (a seed's results do not depend on the others).
# A multirun's exit code, the non-finite patience, the Prompt Registry switch and whether a finished run keeps
# its checkpoint (new keys, absent from older folders) change no result.
RELAUNCH_MAY_CHANGE = (
    "paths", "logger", "ckpt_path", "cache", "system_metrics_interval_s", "trainer.enable_progress_bar",
    "seeds", "results_dir", "multirun_fails_on_job_error", "max_skipped_updates_in_a_row", "register_prompts",
    "save_every", "keep_checkpoint_after_fit",
)  # fmt: skip


def require_run_id(spec: str, option: str) -> None:
    """Refuses (ConfigError) a spec, already found to be no folder, that is not an MLflow run id either:
    before the MLflow store is opened, which would create it."""
    if not RUN_ID.fullmatch(spec):
        raise ConfigError(f"{option}={spec!r}: no such folder, nor an MLflow run id (32 hex digits)")


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}.")
        else:
            out[key] = str(v)
    return out


def log_config_to_mlflow(client: MlflowClient, run_id: str, cfg: DictConfig, omit: Sequence[str] = ()) -> None:
    """The flattened resolved config as params (full values, unlike Lightning's 250-char cut) and
    the resolved YAML as an artifact; without the top-level keys in `omit` (a tool's inherited keys it
    never reads), resolved first so that what the tool reads through them keeps its value."""
    resolved = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in omit}
    params = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten(resolved).items()]
    for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_text(run_id, OmegaConf.to_yaml(resolved), "config.yaml")


def create_run(cfg: DictConfig, tags: dict[str, str], omit: Sequence[str] = ()) -> tuple[MlflowClient, str]:
    """A new MLflow run in the experiment `cfg.logger` names, with the config (less `omit`) logged:
    (client, run id)."""
    client = MlflowClient(cfg.logger.tracking_uri)
    run_id = client.create_run(mlflow_experiment(client, cfg.logger), tags=tags).info.run_id
    log_config_to_mlflow(client, run_id, cfg, omit)
    return client, run_id


def parent_run(cfg: DictConfig, folder: Path, tags: dict[str, str]) -> tuple[MlflowClient | None, str | None]:
    """The MLflow run that holds a folder's child runs (a multi-stage training's stages, a comparison's
    seeds and methods): the one `folder` recorded, resumed, or a new one. (None, None) without a logger
    and on ranks other than zero, which log nothing."""
    if not cfg.logger.get("_target_") or rank_zero_only.rank != 0:
        return None, None
    id_file = folder / RUN_ID_FILE
    if id_file.exists():
        return MlflowClient(cfg.logger.tracking_uri), id_file.read_text().strip()
    client, run_id = create_run(cfg, tags)
    fsio.atomic_write_text(id_file, run_id)
    return client, run_id


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


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """ckpt_path: null = the run folder's last checkpoint if there is one; "last" = that, required;
    else a checkpoint file."""
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    if cfg.ckpt_path is None:
        return last if last.exists() else None
    path = last if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if not path.exists():
        hint = " (re-run in the killed run's folder: hydra.run.dir=<its folder>)" if cfg.ckpt_path == "last" else ""
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no checkpoint at {path}{hint}")
    return path
