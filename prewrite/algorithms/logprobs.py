"""Per-token log-probabilities of completion tokens under a causal LM."""

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
    logits = logits[:, :-1, :] / temperature  # position t predicts token t + 1
    targets = input_ids[:, -num_completion_tokens:]
    return torch.gather(logits.log_softmax(-1), -1, targets.unsqueeze(-1)).squeeze(-1)
