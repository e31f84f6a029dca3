"""Rollouts with transformers `generate` on the policy itself (`rollout=hf`, the CPU default)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prewrite.rollout.base import Rollout, RolloutEngine, to_rollout


class HFRollout(RolloutEngine):
    """Rollouts sampled from the policy module itself: its weights are always the current ones. Also what
    a rewriter outside training samples with (prewrite.rewriter_model)."""

    def __init__(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.policy, self.tokenizer = policy, tokenizer

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        num_generations: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
    ) -> Rollout:
        device = next(self.policy.parameters()).device
        batch = self.tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt").to(device)
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": None} if do_sample else {}
        out = self.policy.generate(
            **batch,
            do_sample=do_sample,
            num_return_sequences=num_generations,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        prompt_len = batch["input_ids"].shape[1]
        return to_rollout(self.tokenizer, batch, out[:, prompt_len:], num_generations)

    def sync(self, policy: PreTrainedModel) -> None:
        # Nothing to copy; keeping the reference follows a policy the caller has replaced (e.g. wrapped).
        self.policy = policy
