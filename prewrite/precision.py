"""`auto` precision: bf16 where the device computes it natively, fp32 everywhere else, fp16 never by default;
and the training itself in fp32 on every CPU.

On a CPU without native bf16 (AVX2 only: most laptops and older cloud VMs) bf16 is emulated, and a
forward + backward pass of the embedded model runs ~12x slower than in fp32 (experiments/RESULTS.md),
so the precision of the Lightning trainer (`hardware.precision`), the task model
(`task_backend.dtype`) and the vLLM rollout engine (`rollout.dtype`) default to `auto`, resolved here
once at start by probing the device. An explicit value is left as it is.

On a CPU that does compute bf16 (AVX512-BF16), bf16-mixed training saved only 10% of `make run`'s time
and its rewriter learned worse: with the same bf16 task model, the best dev rewrite was 6 points lower on
average over 3 seeds and above the initial instruction in none of them, against 2 of 3 with fp32 training
(experiments/RESULTS.md, 2026-12-01). So on a CPU `auto` trains in fp32 and keeps bf16 for the frozen
task model, which only scores.
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


def bf16_is_native(device: str) -> tuple[bool, str]:
    """(does `device` compute bf16 natively, why we think so). `device`: cpu, cuda, cuda:N, gpu or
    None (a vLLM engine: the GPU when there is one, else the CPU)."""
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.startswith(("cuda", "gpu")):
        if not torch.cuda.is_available():
            return False, "no CUDA device visible"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True, f"CPU capability {capability}, oneDNN bf16 supported"
    return False, f"CPU capability {capability}, no native bf16 in oneDNN (bf16 would be emulated, ~10x slower)"


def resolve_dtype(value: str, device: str | None) -> str:
    """A model dtype: `auto` -> bfloat16 or float32 by the device; any other value as given."""
    return value if value != AUTO else ("bfloat16" if bf16_is_native(device)[0] else "float32")


def resolve_config(cfg: DictConfig) -> dict[str, str]:
    """Replaces every `auto` of AUTO_KEYS in `cfg` by its choice and records the choices with their reasons
    under `precision_auto` (so they reach MLflow params with the rest of the config); returns them."""
    choices: dict[str, str] = {}
    for key, (kind, device_key) in AUTO_KEYS.items():
        group, name = key.split(".")
        if group not in cfg or cfg[group].get(name) != AUTO:
            continue
        device = OmegaConf.select(cfg, device_key)
        native, why = bf16_is_native(device)
        if kind == "precision":
            if native and str(device).startswith("cpu"):
                native, why = False, f"{why}, but on a CPU bf16-mixed training learned worse for 10% less time"
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
