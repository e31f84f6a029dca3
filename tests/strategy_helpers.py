"""For tests/test_strategies.py: Lightning's FSDP and DeepSpeed strategies with their CUDA checks
taken out, so that their code paths run on this CPU, and a callback that records each rank's weights.

Lightning 2.6 refuses both strategies without a GPU (FSDP in the accelerator connector, DeepSpeed in
`setup_environment`), although torch's FSDP and DeepSpeed (DS_ACCELERATOR=cpu, gloo) run on a CPU
when told to. Everything else is Lightning's own code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.strategies.fsdp import _get_full_state_dict_context
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import enable_wrap


class CPUFSDPStrategy(FSDPStrategy):
    # Lightning's accelerator check matches the FSDPStrategy class exactly, so a subclass passes it.

    @contextmanager
    def model_sharded_context(self):
        # Lightning hands FSDP the device's CUDA index (None on a CPU), and FSDP then looks for an accelerator
        kwargs = {"cpu_offload": self.cpu_offload, "mixed_precision": self.mixed_precision_config}
        with enable_wrap(
            wrapper_cls=FSDP,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **kwargs,
            **self.kwargs,
        ):
            yield

    def lightning_module_state_dict(self):
        # Lightning offloads the gathered weights to the CPU, which crashes torch when they are there already
        with _get_full_state_dict_context(self.model, world_size=1):
            return self.model.state_dict()

    def optimizer_state(self, optimizer):
        with _get_full_state_dict_context(self.model, world_size=1):
            return FSDP.optim_state_dict(self.model, getattr(optimizer, "_optimizer", optimizer))


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's own only adds the CUDA check

    def setup_distributed(self) -> None:
        # DeepSpeedStrategy's own, less the check that device indices (None on a CPU) match local ranks
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        # DeepSpeedStrategy's own, less the device index (None on a CPU) handed to DeepSpeed as its rank
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer


class RankProbe(L.Callback):
    """Writes `<dirpath>/rank<r>.json`: a digest of this rank's policy weights at train start and end."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.digests: dict[str, str] = {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.digests["start"] = _digest(module.policy)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.digests["end"] = _digest(module.policy)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        info = {"rank": trainer.global_rank, "world_size": trainer.world_size, **self.digests}
        (self.dirpath / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()
