"""What the module needs under Lightning's parallel strategies (DDP, FSDP, DeepSpeed ZeRO).

Every rank rolls out its own rewrites; what must be the same everywhere (advantages under
`scale_rewards=batch`, logged metrics, the rewrites table, dev scores that pick the best rewriter
and stop early) is gathered or broadcast here. A sharded policy (FSDP, ZeRO-3) also needs its
parameters gathered to generate and to be exported. In a single process every function is the
plain computation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy, wrap

T = TypeVar("T")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's sampling stream: the ranks must roll out different rewrites."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


# ---- agreement between ranks ----
def gather(module: L.LightningModule, values: torch.Tensor) -> torch.Tensor:
    """Every rank's `values` [n] concatenated in rank order: [world_size * n]."""
    return module.all_gather(values).reshape(-1)  # [world_size, n] under a parallel strategy, else [n]


def this_rank(module: L.LightningModule, gathered: torch.Tensor) -> torch.Tensor:
    """This rank's part of a `gather`ed tensor."""
    n = gathered.numel() // module.trainer.world_size
    return gathered[module.global_rank * n : (module.global_rank + 1) * n]


def gather_objects(module: L.LightningModule, items: list[T]) -> list[T]:
    """Every rank's `items` (picklable) concatenated in rank order."""
    if module.trainer.world_size == 1:
        return items
    parts: list[Any] = [None] * module.trainer.world_size
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def over_ranks(module: L.LightningModule, values: dict[str, Any], summed: Iterable[str] = ()) -> dict[str, float]:
    """Run-wide values of per-rank numbers: the sum over ranks for the keys in `summed` (counts,
    totals), the mean for the rest (every rank holds the same keys)."""
    values = {k: float(values[k]) for k in sorted(values)}  # one order on every rank
    if module.trainer.world_size == 1:
        return values
    totals = torch.tensor(list(values.values()), dtype=torch.float64, device=module.device)
    totals = module.trainer.strategy.reduce(totals, reduce_op="sum").tolist()
    summed = set(summed)
    world = module.trainer.world_size
    return {k: total if k in summed else total / world for k, total in zip(values, totals, strict=True)}


def on_rank_zero(trainer: L.Trainer, compute: Callable[[], T]) -> T:
    """`compute()` run on global rank zero only and broadcast, so every rank holds its value (the others wait)."""
    return trainer.strategy.broadcast(compute() if trainer.is_global_zero else None)


def check_same_on_every_rank(trainer: L.Trainer, value: str, what: str) -> None:
    """Fail on every rank (not only the odd one, which would leave the others waiting) when the
    ranks hold different values."""
    if trainer.world_size == 1:
        return
    values: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise RuntimeError(f"The ranks disagree on the {what}: {values}. See README, Scaling: launching.")


# ---- a sharded policy ----
class TransformerBlocks(ModuleWrapPolicy):
    """FSDP auto-wrap policy: one FSDP unit per transformer block of whichever Hugging Face model is
    wrapped (the classes it names in `_no_split_modules`, as accelerate's TRANSFORMER_BASED_WRAP
    does), so that switching the rewriter needs no FSDP setting."""

    def __init__(self) -> None:
        super().__init__(module_classes=())

    def _run_policy(self, root_module, ignored_modules, root_kwargs):
        names = {name for m in root_module.modules() for name in getattr(m, "_no_split_modules", None) or ()}
        self._module_classes = {type(m) for m in root_module.modules() if type(m).__name__ in names}
        if not self._module_classes:
            raise ValueError(
                f"FSDP: {type(root_module).__name__} names no transformer block in `_no_split_modules`;"
                " set hardware.strategy.auto_wrap_policy to the set of classes to wrap"
            )
        return super()._run_policy(root_module, ignored_modules, root_kwargs)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """For LightningModule.configure_model. Under FSDP (Lightning calls configure_model inside torch's
    `enable_wrap` with the strategy's settings) the model becomes its own FSDP root and Lightning
    leaves the LightningModule unwrapped. Wrapping the LightningModule instead (Lightning's default)
    breaks manual optimization: training_step then runs inside the root's forward, and FSDP only
    finishes a backward pass (gradient reduce-scatter, states back to idle) for a root whose own
    output produced the loss. Under other strategies `wrap` returns the model unchanged."""
    return model if isinstance(model, FSDP) else wrap(model)


def generation_context(trainer: L.Trainer, model: torch.nn.Module) -> AbstractContextManager:
    """Around `model.generate`. FSDP: generate runs the wrapped model's own forward, not FSDP's, so
    the parameters the root keeps (embeddings, final norm, head) are gathered for it; the blocks
    gather theirs in their own forward. ZeRO-3: all parameters gathered once (as TRL does), rather
    than per layer and per generated token. Elsewhere every rank holds the whole model."""
    if isinstance(model, FSDP):
        return FSDP.summon_full_params(model, recurse=False, writeback=False)
    if _zero_stage_3(trainer):
        return _zero3_generation(trainer.strategy.deepspeed_engine, model)
    return nullcontext()


@contextmanager
def _zero3_generation(engine, model: torch.nn.Module) -> Iterator[None]:
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        # TRL's unwrap_model_for_generation does the same: with the parameters whole, ZeRO-3's
        # per-module hooks only cost time, and after the first update they walk a growing trace on
        # every generated token (a greedy dev rewrite of 8 tokens took 5 minutes on CPU)
        remove_hooks(engine)
        try:
            yield
        finally:
            add_hooks(engine)


def clip_gradients(module: L.LightningModule, model: torch.nn.Module, optimizer, max_norm: float) -> None:
    """Clip by global norm. FSDP: the root's `clip_grad_norm_`, the norm over every rank's shard
    (Lightning refuses norm clipping under FSDP). DeepSpeed clips inside its optimizer step
    (`gradient_clipping` in its config), where Lightning's clipping is a no-op."""
    if isinstance(model, FSDP):
        model.clip_grad_norm_(max_norm)
    else:
        module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")


def full_state_dict(trainer: L.Trainer, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """A sharded model's full weights on global rank zero, gathered by every rank together (call it
    on all ranks); None on the other ranks, and None where every rank holds the whole model already
    (its own state_dict is then complete)."""
    if isinstance(model, FSDP):
        # offloading to CPU is what keeps GPU memory flat; torch crashes offloading weights already on CPU
        offload = next(model.parameters()).device.type != "cpu"
        config = FullStateDictConfig(offload_to_cpu=offload, rank0_only=True)
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
            state = model.state_dict()
        return state if trainer.is_global_zero else None
    if _zero_stage_3(trainer):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            if trainer.is_global_zero:
                return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return None
    return None


def adamw(trainer: L.Trainer, params, **kwargs) -> torch.optim.Optimizer:
    """torch's fused AdamW (one kernel over all parameters; TRL's default, `adamw_torch_fused`), or
    DeepSpeed's CPU AdamW where the DeepSpeed config offloads the optimizer to the CPU (DeepSpeed
    refuses other optimizers there: the step runs on the CPU)."""
    config = trainer.strategy.config if isinstance(trainer.strategy, DeepSpeedStrategy) else {}
    if config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") in ("cpu", "nvme"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, fused=True, **kwargs)


def _zero_stage_3(trainer: L.Trainer) -> bool:
    return isinstance(trainer.strategy, DeepSpeedStrategy) and trainer.strategy.zero_stage_3
