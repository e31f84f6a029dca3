"""PRewrite: train a prompt rewriter with RL so a frozen task LLM does better."""

import os

from omegaconf import OmegaConf

from prewrite.launch import launch_time

# ${cwd:} in conf/paths: unlike ${hydra:runtime.cwd} it also resolves where Hydra has not set up a
# job yet (the sweep folder of a multirun is resolved before any job starts).
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
# ${launch_time:<pattern>} in conf/hydra: the run folder's time, the same in every process of a torchrun job
OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)
