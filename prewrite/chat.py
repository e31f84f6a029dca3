"""One user message as the token ids a model answers, for the rewriter and every local task LLM, so that
training, evaluation and every backend feed a model identical ids.

Models with a chat template get the message as one user turn, ready for the assistant's reply. Models
without one (base models such as gpt2) get the plain format below, with a warning: their answers follow
the message after a newline.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

PLAIN_FORMAT = "{message}\n"
_warned: set[str] = set()


def encode(tokenizer: PreTrainedTokenizerBase, message: str) -> list[int]:
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": message}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    name = tokenizer.name_or_path
    if name not in _warned:
        _warned.add(name)
        log.warning("%s has no chat template: its prompts are the plain message and a newline", name)
    return tokenizer(PLAIN_FORMAT.format(message=message))["input_ids"]


def encode_all(tokenizer: PreTrainedTokenizerBase, messages: list[str]) -> list[list[int]]:
    return [encode(tokenizer, m) for m in messages]
