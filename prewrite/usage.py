"""Token and call accounting for a model role (the task LLM, the rewriter), with an optional dollar estimate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Usage:
    """What a backend has spent so far. Prices are per million tokens; with neither price set there is
    no dollar estimate at all (rather than a misleading $0 for a local model)."""

    price_per_1m_prompt_tokens: float | None = None
    price_per_1m_completion_tokens: float | None = None
    calls: int = 0  # prompts answered by the model (after deduplication and cache hits)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def priced(self) -> bool:
        return self.price_per_1m_prompt_tokens is not None or self.price_per_1m_completion_tokens is not None

    def add(self, calls: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.calls += calls
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def cost_usd(self) -> float | None:
        if not self.priced:
            return None
        return (
            self.prompt_tokens * (self.price_per_1m_prompt_tokens or 0.0)
            + self.completion_tokens * (self.price_per_1m_completion_tokens or 0.0)
        ) / 1e6

    def snapshot(self) -> dict[str, float]:
        out = {
            "calls": float(self.calls),
            "prompt_tokens": float(self.prompt_tokens),
            "completion_tokens": float(self.completion_tokens),
        }
        cost = self.cost_usd()
        if cost is not None:
            out["cost_usd"] = cost
        return out
