"""`auto` precision: bf16 on a GPU that computes it natively, fp32 on every CPU, fp16 never by default.

The precision of the Lightning trainer (`hardware.precision`), the task model (`task_backend.dtype`)
and the vLLM rollout engine (`rollout.dtype`) default to `auto`, resolved here once at start by
probing the device. An explicit value is left as it is.

Why fp32 on every CPU, measured with the embedded model on the three kinds of CPU this project runs on
(experiments/RESULTS.md): on an AVX2-only CPU bf16 is emulated and a forward + backward pass runs ~12x
slower; on an AVX512-BF16 CPU without AMX bf16 was no faster and its runs learned worse (bf16-mixed
training: best dev 6 points lower on average; a bf16 task model: above the initial instruction in 2
of 3 seeds against 3 of 3); on an AMX Xeon (torch 2.13) a bf16 task model scored 2.2x slower than
fp32 and learned worse the same way. (An fp32 run gave seed 0 the same rewrites on an AVX2-capped Xeon
and an AVX2 EPYC; that runs match across CPUs in general is not measured: kernels differ by CPU.)
The probes still run on a CPU, so that the logged reason says what the machine has.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

AUTO = "auto"
# Where `auto` may appear: config key -> (dtype or trainer precision, the key naming its device).
AUTO_KEYS = {
    "hardware.precision": ("precision", "hardware.accelerator"),
    "task_backend.dtype": ("dtype", "task_backend.device"),
    "rollout.dtype": ("dtype", "hardware.accelerator"),
}


def bf16_is_native_and_fast(device: str) -> tuple[bool, str]:
    """(does `device` compute bf16 natively and faster than fp32, why we think so). `device`: cpu, cuda,
    cuda:N, gpu or None (a vLLM engine: the GPU when there is one, else the CPU)."""
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith(("cuda", "gpu")):
        if not torch.cuda.is_available():
            return False, "no CUDA device visible"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, f"CPU capability {capability}, no native bf16 in oneDNN (bf16 would be emulated, ~10x slower)"
    amx = "with" if torch.cpu._is_amx_tile_supported() else "without"
    why = "measured no faster than fp32 on a CPU, and learned worse"
    return False, f"CPU capability {capability}, oneDNN bf16 {amx} AMX ({why})"


def resolve_dtype(value: str, device: str | None) -> str:
    """A model dtype: `auto` -> bfloat16 or float32 by the device; any other value as given."""
    return value if value != AUTO else ("bfloat16" if bf16_is_native_and_fast(device)[0] else "float32")


def resolve_config(cfg: DictConfig) -> dict[str, str]:
    """Replaces every `auto` of AUTO_KEYS in `cfg` by its choice and records the choices with their reasons
    under `precision_auto` (so they reach MLflow params with the rest of the config); returns them."""
    choices: dict[str, str] = {}
    for key, (kind, device_key) in AUTO_KEYS.items():
        group, name = key.split(".")
        if group not in cfg or cfg[group].get(name) != AUTO:
            continue
        device = OmegaConf.select(cfg, device_key)
        native, why = bf16_is_native_and_fast(device)
        if kind == "precision":
            value = "bf16-mixed" if native else "32-true"
        else:
            value = "bfloat16" if native else "float32"
        with open_dict(cfg):
            cfg[group][name] = value
        choices[key] = f"{value} ({why})"
        log.info("%s=auto -> %s: %s", key, value, why)
    if choices:
        with open_dict(cfg):
            cfg.precision_auto = {**cfg.get("precision_auto", {}), **choices}
    return choices
