"""One encoding of a user message for the rewriter and every local task LLM: the chat template when the
model has one, a plain format with a warning when it has none (base models such as gpt2)."""

import copy
import logging

import pytest

from prewrite import chat, model_zoo
from prewrite.backends.hf import HFBackend
from prewrite.rollout.base import rewriter_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return model_zoo.load_tokenizer("embedded:smollm2-135m-instruct")


def test_a_chat_model_gets_one_user_turn_ready_for_the_reply(tokenizer):
    ids = chat.encode(tokenizer, "Classify the sentiment.")
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>user\nClassify the sentiment.<|im_end|>\n<|im_start|>assistant\n")


def test_a_model_without_a_chat_template_gets_the_plain_format_and_one_warning(tokenizer, caplog):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    plain.name_or_path = "no-template-model"
    with caplog.at_level(logging.WARNING, logger="prewrite.chat"):
        ids = chat.encode_all(plain, ["Classify the sentiment.", "Answer the question."])
    assert ids == [
        tokenizer("Classify the sentiment.\n")["input_ids"],
        tokenizer("Answer the question.\n")["input_ids"],
    ]
    assert caplog.text.count("no-template-model has no chat template") == 1
    # the rewriter's prompt goes through the same function
    prompt, cut = rewriter_prompt(plain, "Rewrite: {instruction}", "Say yes.")
    assert prompt == tokenizer("Rewrite: Say yes.\n")["input_ids"] and cut == 0


QA_TEMPLATE = "{{ messages[0]['content'] }}\nAnswer:"


def test_a_configured_chat_template_replaces_the_models_own_and_keys_the_cache(tokenizer):
    configured = model_zoo.load_tokenizer("embedded:smollm2-135m-instruct", chat_template=QA_TEMPLATE)
    assert chat.encode(configured, "Is the sky blue?") == tokenizer("Is the sky blue?\nAnswer:")["input_ids"]
    backend = HFBackend("embedded:smollm2-135m-instruct", dtype="float32", chat_template=QA_TEMPLATE)
    assert backend._encode(["Is the sky blue?"]) == [configured("Is the sky blue?\nAnswer:")["input_ids"]]
    default = HFBackend("embedded:smollm2-135m-instruct", dtype="float32")
    # cached answers of one prompt format are never served for another
    assert backend.cache_identity()["prompt_format"] != default.cache_identity()["prompt_format"]
    assert default.cache_identity()["prompt_format"] == "chat: one user message + generation prompt"


def test_max_prompt_length_cuts_the_rewriters_prompt_from_the_left_and_says_so(tokenizer, caplog):
    whole, cut = rewriter_prompt(tokenizer, "Rewrite: {instruction}", "Say yes.")
    assert cut == 0 and rewriter_prompt(tokenizer, "Rewrite: {instruction}", "Say yes.", len(whole)) == (whole, 0)
    with caplog.at_level(logging.WARNING, logger="prewrite.rollout.base"):
        kept, cut = rewriter_prompt(tokenizer, "Rewrite: {instruction}", "Say yes.", 5)
    assert kept == whole[-5:] and cut == len(whole) - 5  # the end, where the rewrite starts, is kept
    assert f"algorithm.max_prompt_length=5 keeps its last 5 ({cut} cut" in caplog.text
