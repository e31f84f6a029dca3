"""The contract every rollout engine keeps, and the Rollout it returns.

An engine samples completions of the rewriter's prompts from the current policy (`generate`) and is
told after every update to sample from the new weights (`sync`). Every engine builds its Rollout with
`to_rollout`, so the update cannot tell which engine sampled.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prewrite import chat

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, T] right-padded after the first EOS
    completion_mask: torch.Tensor  # [B, T] 1 up to and including the first EOS
    truncated: torch.Tensor  # [B] bool: no EOS within max_new_tokens
    texts: list[str]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def rows(self, idx: torch.Tensor) -> Rollout:
        """The completions at `idx` (a micro-batch), padded as the whole rollout is."""
        return Rollout(
            self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx], self.completion_mask[idx],
            self.truncated[idx], [self.texts[i] for i in idx.tolist()],
        )  # fmt: skip


def rewriter_prompt(
    tokenizer: PreTrainedTokenizerBase,
    meta_prompt: str,
    instruction: str,
    max_length: int | None = None,
    input: str | None = None,
) -> tuple[list[int], int]:
    """The rewriter's prompt ids (the meta prompt around the instruction, and around the input for a
    per-input rewrite, as one user message), cut from the left to `max_length` tokens as TRL's
    `max_prompt_length` cuts, and how many tokens were cut."""
    fields = {"instruction": instruction} | ({} if input is None else {"input": input})
    ids = chat.encode(tokenizer, meta_prompt.format(**fields))
    cut = max(0, len(ids) - max_length) if max_length else 0
    if cut:
        log.warning(
            "The rewriter's prompt is %d tokens: algorithm.max_prompt_length=%d keeps its last %d (%d cut from the "
            "start)", len(ids), max_length, max_length, cut,
        )  # fmt: skip
    return ids[cut:], cut


def to_rollout(
    tokenizer: PreTrainedTokenizerBase,
    prompt_batch: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    num_generations: int,
) -> Rollout:
    """The Rollout of `num_generations` completions per prompt of the left-padded `prompt_batch`
    (grouped contiguously). `completion_ids` [B, T] may hold anything after a row's first EOS
    (generate's padding, or the padding of shorter vLLM outputs): it is masked and set to the pad id
    here. Shared by the hf and vllm rollouts, so the loss sees one convention."""
    is_eos = completion_ids == tokenizer.eos_token_id
    # Index of the first EOS (or T when none): tokens after it are padding.
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.size(1))
    positions = torch.arange(completion_ids.size(1), device=completion_ids.device).unsqueeze(0)
    completion_mask = (positions <= first_eos.unsqueeze(1)).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(
        prompt_ids=prompt_batch["input_ids"].repeat_interleave(num_generations, 0),
        prompt_mask=prompt_batch["attention_mask"].repeat_interleave(num_generations, 0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=~is_eos.any(1),
        texts=[t.strip() for t in texts],
    )


class RolloutEngine(ABC):
    """Samples rewrites from the policy (conf/rollout: `_target_` a subclass, built with the policy and
    its tokenizer)."""

    @abstractmethod
    def generate(
        self,
        prompt_ids: list[list[int]],
        num_generations: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
    ) -> Rollout:
        """`num_generations` completions per prompt, grouped contiguously (as group_advantages expects)."""

    @abstractmethod
    def sync(self, policy: PreTrainedModel) -> None:
        """Called after every update (and after a resume): the next rollout samples from `policy`'s weights."""
