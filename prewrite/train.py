"""Train a prompt rewriter: `python -m prewrite.train [task=sst2] [reward=accuracy] [key=value ...]`.

The training itself is prewrite/training.py. In a multirun (`-m`) each job runs through
prewrite.sweep.run_job: a child of the sweep's MLflow run, recorded and skipped if it fails.
"""

from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # Imported here rather than above (they load torch, Lightning and MLflow, ~10 s on 2 cores), so that
    # `--help`, `--cfg job` and a mistyped option answer at once.
    from prewrite import sweep
    from prewrite.cli import tool_main
    from prewrite.training import train

    log.info("Run folder: %s", HydraConfig.get().runtime.output_dir)
    with tool_main("train"):
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # a failed job is recorded and the sweep goes on
            return sweep.run_job(train, cfg)
        return train(cfg)


if __name__ == "__main__":
    main()
