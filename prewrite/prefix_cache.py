"""A prompt run through a causal LM once, its keys and values then served to every row that starts with it:
a GRPO group's rewrites (rollout and update), one rewrite's examples (the hf task backend)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # each layer's keys and values, [prefixes, heads, width, dim]


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, as generate gives a left-padded row: the row computes what it
    would alone."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def run_prefixes(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Layers]:
    """One forward over the distinct prefixes: the logits at each one's last position [P, 1, V] and the
    layers' keys and values. Gradients flow through both when the caller has them on."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits, [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def cache_for_rows(layers: Layers, rows: torch.Tensor, config) -> DynamicCache:
    """The cache of the rows whose prefix is `rows[i]` (an index into the prefixes run)."""
    return DynamicCache([(k[rows], v[rows]) for k, v in layers], config=config)
