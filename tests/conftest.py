from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import prewrite  # noqa: F401  (registers the ${cwd:} resolver that conf/paths uses)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose_config(tmp_path):
    """Compose conf/<name>.yaml with overrides, as `python -m prewrite.<name>` would; ${hydra:...}
    interpolations resolve as in a real run whose folder is tmp_path."""

    def _compose(name: str, *overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        return cfg

    return _compose


@pytest.fixture
def compose_train(compose_config):
    return lambda *overrides: compose_config("train", *overrides)
