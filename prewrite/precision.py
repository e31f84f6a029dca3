"""`auto` precision: bf16 where the device computes it natively and fast, fp32 everywhere else, fp16 never by
default; and the training itself in fp32 on every CPU.

On a CPU without native bf16 (AVX2 only: most laptops and older cloud VMs) bf16 is emulated, and a
forward + backward pass of the embedded model runs ~12x slower than in fp32 (experiments/RESULTS.md),
so the precision of the Lightning trainer (`hardware.precision`), the task model
(`task_backend.dtype`) and the vLLM rollout engine (`rollout.dtype`) default to `auto`, resolved here
once at start by probing the device. An explicit value is left as it is.

On a CPU that computes bf16 with AVX512-BF16 but has no AMX, bf16 bought little and cost learning
(experiments/RESULTS.md, 2026-12-01 and 2026-12-02, 3 seeds each): bf16-mixed training saved 10% of
`make run`'s time and its best dev rewrite was 6 points lower on average; a bf16 task model scored no
faster than fp32, and with it the run's selection beat the initial instruction on dev in 2 of 3 seeds
against 3 of 3 in fp32. So such a CPU runs everything in fp32, as an AVX2 CPU does (and its fp32 runs
reproduce an AVX2 CPU's exactly). With AMX the task model, which only scores, runs in bf16 (3.7x
faster scoring, ../DESIGN.md); training stays fp32 on every CPU.
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
    if not torch.cpu._is_amx_tile_supported():
        return False, f"CPU capability {capability}, oneDNN bf16 without AMX (no faster than fp32, learned worse)"
    return True, f"CPU capability {capability}, oneDNN bf16 with AMX"


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
            if native and str(device).startswith("cpu"):
                native, why = False, f"{why}; training stays fp32 on a CPU (bf16-mixed learned worse where measured)"
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
