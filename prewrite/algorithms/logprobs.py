"""Per-token log-probabilities (and, for PPO, value estimates) of completion tokens under a causal LM."""

from __future__ import annotations

import torch

from prewrite import prefix_cache


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(token) for the last `num_completion_tokens` positions of input_ids: [B, T].

    Logits are divided by the sampling temperature so the log-probs are those of the distribution
    the completions were sampled from (as TRL does). Rows that share their prompt (a GRPO group's
    completions) share its forward pass (`_shared_prompt_logits`)."""
    n = num_completion_tokens
    prompt_part = torch.cat([input_ids[:, :-n], attention_mask[:, :-n]], 1)  # ids, then mask
    prompts, inverse = torch.unique(prompt_part, dim=0, return_inverse=True)
    if len(prompts) < len(prompt_part) and not getattr(model, "is_gradient_checkpointing", False):
        width = input_ids.size(1) - n
        logits = _shared_prompt_logits(
            model, prompts[:, :width], prompts[:, width:], input_ids, attention_mask, inverse
        )
    else:
        keep = prefix_cache.keep_last(n + 1, input_ids.device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits[:, :-1]
    return _token_logprobs(logits, input_ids, n, temperature)


def _shared_prompt_logits(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    inverse: torch.Tensor,
) -> torch.Tensor:
    """The logits [B, n, V] that predict the completion tokens (input_ids after the prompt width), with each
    distinct prompt (`prompt_ids`, `prompt_mask`; `inverse`: row -> its prompt) run once: its keys and values,
    taken for every row that has it, are the cache the completions attend to, and gradients reach the
    prompt's pass through them. Positions are those of one pass over the whole rows (by column, padding
    included), so the logits equal that pass's up to rounding."""
    prompt_logits, layers = prefix_cache.run_prefixes(model, prompt_ids, prompt_mask)
    n = input_ids.size(1) - prompt_ids.size(1)
    tail = model(
        input_ids=input_ids[:, -n:],
        attention_mask=attention_mask,
        past_key_values=prefix_cache.cache_for_rows(layers, inverse, model.config),
        logits_to_keep=n,
    )
    # the prompt's last position predicts the first completion token; the last completion position predicts none
    # (index_select for a repeatable backward: prefix_cache.cache_for_rows)
    return torch.cat([prompt_logits.index_select(0, inverse), tail.logits[:, :-1]], 1)


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
    keep = prefix_cache.keep_last(n + 1, input_ids.device)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, -(n + 1) : -1]
    values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1)
    return _token_logprobs(out.logits[:, :-1], input_ids, n, temperature), values


def _token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
    """log p of the last n tokens of input_ids from `logits` [B, n, V], position t predicting token t."""
    targets = input_ids[:, -n:]
    return torch.gather((logits / temperature).log_softmax(-1), -1, targets.unsqueeze(-1)).squeeze(-1)
