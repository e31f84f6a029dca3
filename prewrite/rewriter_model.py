"""A rewriter model outside training: find it (a folder, a training run folder or an MLflow run id), load it, use it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prewrite import chat, model_zoo
from prewrite.config_check import ConfigError
from prewrite.rollout.hf_rollout import HFRollout
from prewrite.runs import require_run_id
from prewrite.usage import Usage


@dataclass
class Rewriter:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: dict  # prewrite.json written at export: task, instruction, meta_prompt, best step and score
    path: Path
    usage: Usage = field(default_factory=Usage)  # every completion it generated (calls = samples), as in training
    decoding: str = "auto"  # rollout.decoding: the decoding loop where it applies, or always generate

    def rewrite(
        self, instruction: str, meta_prompt: str, num: int = 1, temperature: float = 1.0, max_new_tokens: int = 48
    ) -> list[str]:
        """The greedy rewrite (num=0) or `num` sampled rewrites of `instruction`."""
        return self.complete(meta_prompt.format(instruction=instruction), num, temperature, max_new_tokens)

    def rewrite_each(
        self,
        instruction: str,
        meta_prompt: str,
        inputs: list[str],
        max_new_tokens: int = 48,
        batch_size: int = 16,
        num: int = 0,
        temperature: float = 1.0,
    ) -> list[str]:
        """The greedy rewrite (num=0) of `instruction` for each input, or `num` sampled ones in a row per
        input, as training groups them (a rewriter trained with rewrite_mode=input)."""
        texts = []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            prompts = [chat.encode(self.tokenizer, meta_prompt.format(instruction=instruction, input=x)) for x in chunk]
            texts += self._generate(prompts, num, temperature, max_new_tokens)
        return texts

    def complete(self, message: str, num: int = 1, temperature: float = 1.0, max_new_tokens: int = 48) -> list[str]:
        """The greedy reply (num=0) or `num` sampled replies to one user message (chat template)."""
        return self._generate([chat.encode(self.tokenizer, message)], num, temperature, max_new_tokens)

    @cached_property
    def engine(self) -> HFRollout:
        """One engine for every call (it checks the model and logs how it decodes once)."""
        return HFRollout(self.model, self.tokenizer, self.decoding)

    def _generate(self, prompts: list[list[int]], num: int, temperature: float, max_new_tokens: int) -> list[str]:
        out = self.engine.generate(
            prompts,
            num_generations=max(num, 1),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            do_sample=num > 0,
        )
        self.usage.add(len(out.texts), int(out.prompt_mask.sum()), int(out.completion_mask.sum()))
        return out.texts


def locate(spec: str, tracking_uri: str | None = None) -> Path:
    """A Hugging Face folder for `spec`: that folder, a training run folder's `rewriter/`, or the
    `rewriter` artifact of an MLflow run id (downloaded). A spec that is none of these is an option error
    (ConfigError), so the tools end with one line naming `rewriter_path`."""
    path = Path(spec).expanduser()
    if (path / "config.json").exists():
        return path
    if (path / "rewriter" / "config.json").exists():
        return path / "rewriter"
    if path.exists():
        raise ConfigError(f"rewriter_path={spec!r} holds no rewriter: expected config.json in it or in rewriter/")
    require_run_id(spec, "rewriter_path")
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=spec, artifact_path="rewriter", tracking_uri=tracking_uri)
    except Exception as e:
        message = f"rewriter_path={spec!r}: no MLflow run with a rewriter artifact in {tracking_uri}: {e}"
        raise ConfigError(message) from None
    return Path(local)


def decoding(cfg: DictConfig) -> str:
    """How a tool's rewriter decodes: the run config's `rollout.decoding` (rollout=hf), else auto."""
    return OmegaConf.select(cfg, "rollout.decoding", default="auto")


def load_untrained(
    model_name_or_path: str, dtype: str = "float32", chat_template: str | None = None, decoding: str = "auto"
) -> Rewriter:
    """The rewriter before training (`rewriter.model_name_or_path`: embedded:<name>, a hub id or a folder;
    `rewriter.chat_template`)."""
    model = model_zoo.load_model(model_name_or_path, dtype).eval()
    tokenizer = model_zoo.load_tokenizer(model_name_or_path, chat_template)
    return Rewriter(model, tokenizer, {}, Path(model_zoo.resolve(model_name_or_path)), decoding=decoding)


def load(spec: str, tracking_uri: str | None = None, dtype: str = "float32", decoding: str = "auto") -> Rewriter:
    path = locate(spec, tracking_uri)
    info_file = path / "prewrite.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    model = model_zoo.load_model(str(path), dtype).eval()
    tokenizer = model_zoo.load_tokenizer(str(path))
    return Rewriter(model=model, tokenizer=tokenizer, info=info, path=path, decoding=decoding)
