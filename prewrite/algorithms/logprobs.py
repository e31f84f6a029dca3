"""Per-token log-probabilities (and, for PPO, value estimates) of completion tokens under a causal LM."""

from __future__ import annotations

import torch


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(token) for the last `num_completion_tokens` positions of input_ids: [B, T].

    Logits are divided by the sampling temperature so the log-probs are those of the distribution
    the completions were sampled from (as TRL does).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=num_completion_tokens + 1).logits
    return _token_logprobs(logits, input_ids, num_completion_tokens, temperature)


def completion_logprobs_and_values(
    model: torch.nn.Module,
    value_head: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs as above and the value head's estimate [B, T] from the same forward pass: values[:, t]
    is read at the position that predicts completion token t (the state before it is generated)."""
    n = num_completion_tokens
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=n + 1, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, -(n + 1) : -1]
    values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1)
    return _token_logprobs(out.logits, input_ids, n, temperature), values


def _token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
    logits = logits[:, :-1, :] / temperature  # position t predicts token t + 1
    targets = input_ids[:, -n:]
    return torch.gather(logits.log_softmax(-1), -1, targets.unsqueeze(-1)).squeeze(-1)
