"""Rollouts sampled from the policy itself (`rollout=hf`, the CPU default): by this project's decoding loop
where the policy allows it (rollout.decoding=auto), else by transformers `generate`."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prewrite import prefix_cache
from prewrite.config_check import check_decoding
from prewrite.rollout import decoding_loop
from prewrite.rollout.base import Rollout, RolloutEngine, to_rollout

log = logging.getLogger(__name__)


class HFRollout(RolloutEngine):
    """Rollouts sampled from the policy module itself: its weights are always the current ones. Also what
    a rewriter outside training samples with (prewrite.rewriter_model)."""

    def __init__(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, decoding: str = "auto"):
        check_decoding(decoding)
        self.tokenizer, self.decoding, self.why = tokenizer, decoding, "not synced yet"
        self.sync(policy)

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
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # under bf16 autocast (hardware.precision=bf16-mixed) generate computes what the run asked for
        if self.loop and not torch.is_autocast_enabled(device.type):
            out = decoding_loop.decode(
                self.policy, ids, mask, num_generations, max_new_tokens, self.tokenizer.pad_token_id,
                temperature, top_p, do_sample,
            )  # fmt: skip
            return to_rollout(self.tokenizer, batch, out, num_generations)
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": None} if do_sample else {}
        cache, repeats = None, num_generations
        if num_generations > 1 and int(mask.sum(1).min()) > 1:
            # A group's prompt runs once (generate would run it for each of the G rows): its keys and values
            # but the last token's, which generate needs to start from, serve the whole group.
            _, layers = prefix_cache.run_prefixes(
                self.policy, ids[:, :-1], mask[:, :-1], prefix_cache.left_padded_positions(mask[:, :-1])
            )
            rows = torch.arange(len(ids), device=device).repeat_interleave(num_generations)
            cache = prefix_cache.cache_for_rows(layers, rows, self.policy.config)
            ids, mask, repeats = ids[rows], mask[rows], 1
        out = self.policy.generate(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=cache,
            do_sample=do_sample,
            num_return_sequences=repeats,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        return to_rollout(self.tokenizer, batch, out[:, ids.shape[1] :], num_generations)

    def sync(self, policy: PreTrainedModel) -> None:
        # Nothing to copy; keeping the reference follows a policy the caller has replaced (e.g. wrapped).
        why = decoding_loop.unsupported(policy) if self.decoding == "auto" else "rollout.decoding=generate"
        if why != self.why:
            log.info("Rollouts decoded by %s", f"transformers generate: {why}" if why else "the decoding loop")
        self.policy, self.why = policy, why

    @property
    def loop(self) -> bool:
        """Whether rollouts go through the decoding loop (nothing keeps them on generate)."""
        return self.why is None
