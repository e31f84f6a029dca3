"""Rewrite an instruction with a trained rewriter: `python -m prewrite.rewrite rewriter_path=... [instruction=...]`."""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig

from prewrite import rewriter_model
from prewrite.cli import tool_main
from prewrite.config_check import ConfigError


@hydra.main(version_base="1.3", config_path="../conf", config_name="rewrite")
def main(cfg: DictConfig) -> list[str]:
    with tool_main("rewrite"):
        L.seed_everything(cfg.seed, verbose=False)
        rw = rewriter_model.load(cfg.rewriter_path, cfg.paths.mlflow_tracking_uri, cfg.dtype)
        instruction = cfg.instruction or rw.info.get("instruction")
        meta_prompt = cfg.meta_prompt or rw.info.get("meta_prompt")
        if not instruction or not meta_prompt:
            missing = [k for k, v in (("instruction", instruction), ("meta_prompt", meta_prompt)) if not v]
            raise ConfigError(f"{rw.path} has no prewrite.json entry for {missing}: pass them, e.g. instruction='...'")
        texts = rw.rewrite(instruction, meta_prompt, cfg.num_samples, cfg.temperature, cfg.max_new_tokens)
        for text in texts:
            print(text if len(texts) == 1 else f"- {text}")
        return texts


if __name__ == "__main__":
    main()
