"""The contract every task-LLM backend keeps: what the scorer, the response cache and the run's usage
metrics call. A backend configured by `_target_` (conf/task_backend) subclasses `TaskBackend`."""

from __future__ import annotations

from abc import ABC, abstractmethod

from prewrite.usage import Usage


class TaskBackendError(RuntimeError):
    """A request to the task LLM failed for good. `answered` holds the answers that did arrive in the
    failed call, by position in its prompt list, so a cache keeps them."""

    def __init__(self, message: str, answered: dict[int, str] | None = None):
        super().__init__(message)
        self.answered = answered or {}


class TaskModelUnavailable(TaskBackendError):
    """The task LLM stayed unreachable past the backend's patience: a training stops with a checkpoint
    (prewrite.faults.TaskModelDown) and a re-launch resumes once it answers again."""


class FailedAnswer(str):
    """The answer to a prompt the task LLM refused on its own (e.g. too long for its context): an empty
    string to the scorer, with the `reason`; counted, and never cached, so a later run asks again."""

    def __new__(cls, reason: str) -> FailedAnswer:
        answer = super().__new__(cls, "")
        answer.reason = reason
        return answer


class TaskBackend(ABC):
    """The frozen task LLM: answers user messages (`generate`) and, where it can, scores a given reply
    (`loglikelihood`) or a classification task's labels (`label_scores`). `usage` counts what it ran: calls
    are prompts answered by the model after deduplication (a cache hit or a repeat inside one call costs
    none)."""

    # Inputs that carry no content ("N/A", ""): when set, the scorer reads a classification answer as the
    # label whose score rises most above its score on these inputs under the same instruction (contextual
    # calibration, Zhao et al. 2021), so an instruction that only shifts the label prior gains nothing.
    content_free_inputs: tuple[str, ...] = ()

    def __init__(
        self, price_per_1m_prompt_tokens: float | None = None, price_per_1m_completion_tokens: float | None = None
    ):
        self.usage = Usage(price_per_1m_prompt_tokens, price_per_1m_completion_tokens)

    @abstractmethod
    def generate(self, prompts: list[str]) -> list[str]:
        """One answer per user message, in order (greedy, or constrained to a task's labels)."""

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float | None]:
        """Mean log-probability per token of each continuation as the reply to its prompt (None for an
        empty continuation). The `perplexity` and label rewards need it."""
        raise NotImplementedError(f"{type(self).__name__} cannot score log-likelihoods; use task_backend=hf for it")

    def label_scores(self, prompts: list[str]) -> list[list[float]]:
        """Per prompt, each label verbalizer's summed log-probability as the start of the reply, in the
        order of `choices`: what constrained answering takes the best of."""
        raise NotImplementedError(f"{type(self).__name__} does not score labels; use task_backend=hf or vllm")

    @abstractmethod
    def cache_identity(self) -> dict:
        """Everything that decides an answer (model, revision, dtype, decoding), for the response cache's key."""

    def with_choices(self, choices: list[str] | None) -> TaskBackend:
        """The same model answering by these label verbalizers (None: decoding), for another task of a
        mixture, with usage counted apart. Only a backend with the `constrained` option has it."""
        raise NotImplementedError(f"{type(self).__name__} does not choose among labels")

    @property
    def num_calls(self) -> int:
        return self.usage.calls

    def usage_snapshot(self) -> dict[str, float]:
        """Run totals for the metrics `train/usage/task_llm/*`: calls, tokens, cost where priced."""
        return self.usage.snapshot()
