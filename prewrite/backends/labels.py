"""Constrained answering, shared by the local backends (hf, vllm): a classification task's answer is the
label verbalizer with the highest summed log-probability as the start of the reply, not decoded text."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

from prewrite.usage import Usage


def encode_choices(tokenizer, choices: list[str]) -> list[list[int]]:
    """Each verbalizer's token ids as the start of a reply; refuses empty or indistinguishable ones."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    empty = [c for c, i in zip(choices, ids, strict=True) if not i]
    if empty:
        raise ValueError(f"task_backend.constrained=true: the verbalizers {empty} encode to no tokens")
    if len({tuple(i) for i in ids}) < len(ids):
        raise ValueError(f"task_backend.constrained=true: two verbalizers of {choices} encode to the same tokens")
    return ids


def choice_prefixes(choice_ids: list[list[int]]) -> list[tuple[int, ...]]:
    """The verbalizers' tokens but the last, deduplicated: a verbalizer's last token needs no input position
    of its own, so one row per prefix scores every verbalizer that shares it (single-token verbalizers,
    the usual case, all read the prompt's next-token distribution from one row)."""
    return list(dict.fromkeys(tuple(ids[:-1]) for ids in choice_ids))


def best_index(scores: Sequence[float]) -> int:
    """The position of the highest score; a tie goes to the first."""
    return max(range(len(scores)), key=scores.__getitem__)


def label_softmax(log_scores: Sequence[float]) -> list[float]:
    """Probabilities over a task's labels from their log-scores (a softmax, stable at any scale)."""
    top = max(log_scores)
    weights = [math.exp(v - top) for v in log_scores]
    return [w / sum(weights) for w in weights]


class LabelChoosing:
    """A backend's constrained mode: `constrained`, `choices` and their token ids, the content-free inputs
    its answers are calibrated against, the twin for another task's labels, and the mode's part of the
    cache key. The backend sets `tokenizer` and `usage` and computes `label_scores`."""

    def _set_choices(
        self, constrained: bool, choices: list[str] | None, content_free_inputs: Sequence[str] = ()
    ) -> None:
        if constrained and not choices:
            raise ValueError(
                "task_backend.constrained=true needs the label verbalizers of a classification task (choices), "
                f"got {choices!r}; build the backend with build_backend(..., task=task) or set constrained=false"
            )
        self.constrained = constrained
        self.choices = list(choices) if constrained else None
        self._choice_ids = encode_choices(self.tokenizer, self.choices) if constrained else None
        self.content_free_inputs = tuple(content_free_inputs) if constrained else ()  # calibrates a choice

    def with_choices(self, choices: list[str] | None):
        twin = copy.copy(self)  # the model and tokenizer are shared, not loaded again
        twin.usage = Usage(self.usage.price_per_1m_prompt_tokens, self.usage.price_per_1m_completion_tokens)
        twin._set_choices(choices is not None, choices, self.content_free_inputs)
        return twin

    def decoding_identity(self) -> dict:
        """Constrained answers depend on the choices (and their order: ties go to the first), greedy ones do not."""
        return {"decoding": "constrained", "choices": self.choices} if self.constrained else {"decoding": "greedy"}

    def best_choice(self, scores: Sequence[float]) -> str:
        """The verbalizer with the highest score (scores in the order of `choices`); a tie goes to the first."""
        return self.choices[best_index(scores)]

    def _choose(self, prompts: list[str]) -> list[str]:
        return [self.best_choice(scores) for scores in self.label_scores(prompts)]
