"""`auto` precision: bf16 on a GPU that computes it natively, fp32 on every CPU and GPU without it, an
explicit value kept."""

import logging

import pytest
import torch

from prewrite import precision


@pytest.fixture
def machine(monkeypatch):
    """Sets what the capability probes answer: machine(cpu_bf16=..., cuda=None | 'bf16' | 'no-bf16', amx=...);
    cpu_bf16 without amx is an AVX512-BF16 CPU."""

    def _set(cpu_bf16: bool, cuda: str | None = None, capability: str = "AVX2", amx: bool = True):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: cpu_bf16 and amx)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda == "bf16")

    return _set


@pytest.mark.parametrize(
    ("cpu_bf16", "cuda", "device", "native"),
    [
        (False, None, "cpu", False),  # AVX2-only CPU: bf16 emulated
        (True, None, "cpu", False),  # AMX CPU: native, but measured slower than fp32
        (False, "bf16", "cuda", True),  # Ampere or newer
        (False, "no-bf16", "cuda:0", False),  # e.g. V100: fp32, never fp16 by default
        (True, None, "gpu", False),  # a GPU asked for where none is visible
        (False, "bf16", None, True),  # a vLLM engine: the GPU when there is one
        (True, None, None, False),  # ... else the CPU
    ],
)
def test_bf16_only_on_a_gpu_that_computes_it_natively(machine, cpu_bf16, cuda, device, native):
    machine(cpu_bf16, cuda)
    assert precision.bf16_is_native_and_fast(device)[0] is native
    assert precision.resolve_dtype("auto", device) == ("bfloat16" if native else "float32")
    assert precision.resolve_dtype("float16", device) == "float16"  # an explicit value wins


@pytest.mark.parametrize("amx", [False, True])
def test_a_cpu_with_native_bf16_gets_fp32_and_says_what_it_has(compose_train, machine, amx):
    # measured no faster than fp32 (slower with AMX) for the task model, and learned worse: experiments/RESULTS.md
    machine(True, capability="AVX512", amx=amx)
    native, why = precision.bf16_is_native_and_fast("cpu")
    assert not native and ("with AMX" if amx else "without AMX") in why
    cfg = compose_train("rollout=vllm")
    precision.resolve_config(cfg)
    assert (cfg.hardware.precision, cfg.task_backend.dtype, cfg.rollout.dtype) == ("32-true", "float32", "float32")
    assert cfg.precision_auto["task_backend.dtype"].startswith("float32 (CPU capability AVX512, oneDNN bf16 with")


def test_the_reason_names_the_cpu_capability(machine):
    machine(False, capability="AVX2")
    why = precision.bf16_is_native_and_fast("cpu")[1]
    assert "AVX2" in why and "emulated" in why


@pytest.mark.parametrize(("cuda", "expected"), [(None, ("32-true", "float32")), ("bf16", ("bf16-mixed", "bfloat16"))])
def test_config_auto_values_are_resolved_logged_and_recorded(compose_train, machine, caplog, cuda, expected):
    machine(False, cuda)
    on_gpu = ["hardware=gpu", "task_backend.device=cuda"] if cuda else []
    cfg = compose_train("rollout=vllm", *on_gpu)
    assert (cfg.hardware.precision, cfg.task_backend.dtype, cfg.rollout.dtype) == ("auto", "auto", "auto")
    with caplog.at_level(logging.INFO, logger="prewrite.precision"):
        choices = precision.resolve_config(cfg)
    assert (cfg.hardware.precision, cfg.task_backend.dtype, cfg.rollout.dtype) == (expected[0], *expected[1:] * 2)
    assert set(choices) == {"hardware.precision", "task_backend.dtype", "rollout.dtype"}
    reason = "CPU capability AVX2" if cuda is None else "Test GPU computes bf16"
    assert cfg.precision_auto["task_backend.dtype"].startswith(f"{expected[1]} ({reason}")  # -> MLflow
    assert "hardware.precision=auto -> " + expected[0] in caplog.text


def test_explicit_values_are_left_alone(compose_train, machine):
    machine(False)
    cfg = compose_train("hardware.precision=bf16-mixed", "task_backend.dtype=bfloat16")
    assert precision.resolve_config(cfg) == {}
    assert (cfg.hardware.precision, cfg.task_backend.dtype) == ("bf16-mixed", "bfloat16")
    assert "precision_auto" not in cfg


@pytest.mark.parametrize(("cuda", "expected"), [("bf16", "bf16-mixed"), ("no-bf16", "32-true")])
def test_a_gpu_trains_in_bf16_where_it_computes_it(compose_train, machine, cuda, expected):
    machine(True, cuda)
    cfg = compose_train("hardware=gpu")
    precision.resolve_config(cfg)
    assert cfg.hardware.precision == expected
