"""One user message as the token ids a model answers, for the rewriter and every local task LLM, so that
training, evaluation and every backend feed a model identical ids.

Models with a chat template get the message as one user turn, ready for the assistant's reply. Models
without one (base models such as gpt2) get the plain format below, with a warning: their answers follow
the message after a newline. A configured template (`rewriter.chat_template`, `task_backend.chat_template`:
a Jinja chat template as transformers' `tokenizer.chat_template`, set by `model_zoo.load_tokenizer`)
replaces either.
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


def prompt_format(tokenizer: PreTrainedTokenizerBase, configured: str | None) -> str:
    """How `encode` turns a message into a prompt, for the response cache's key."""
    if configured:
        return f"chat template: {configured}"
    return "chat: one user message + generation prompt" if tokenizer.chat_template else f"plain: {PLAIN_FORMAT!r}"


def encode_all(tokenizer: PreTrainedTokenizerBase, messages: list[str]) -> list[list[int]]:
    return [encode(tokenizer, m) for m in messages]
