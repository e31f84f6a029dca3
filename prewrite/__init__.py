"""PRewrite: train a prompt rewriter with RL so a frozen task LLM does better."""

import os

from omegaconf import OmegaConf

# ${cwd:} in conf/paths: unlike ${hydra:runtime.cwd} it also resolves where Hydra has not set up a
# job yet (the sweep folder of a multirun is resolved before any job starts).
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
