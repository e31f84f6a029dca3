"""A KV-cached decoding loop in plain torch for a Llama-architecture policy on a CPU: the rollout `generate`
samples, in 0.63x its time on the embedded default (experiments/RESULTS.md, issue 17).

On a CPU, a rollout of the embedded model spends about half of `generate`'s time outside the weight
products: module calls, masks, a cache grown by concatenation, logits processors and a sampler that draws
one number per vocabulary entry. This loop reads the policy's own weights (MKL's packed layout on an Intel
CPU: one packing per rollout, as the weights change after every update), writes keys and values into
a preallocated cache, and draws one number per row by the inverse CDF: the same distribution as
`generate`'s (temperature, then top-p through transformers' own warper), not the same draws, so a seed's
rewrites differ from `generate`'s. Greedy decoding gives `generate`'s tokens (tests/test_decoding_loop.py).
The prompt runs through the model's own forward, once per distinct prompt.

`unsupported` says why a policy must go through `generate` instead (another architecture, adapters,
sharded weights, a GPU, generation settings this loop does not apply).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.generation.logits_process import TopPLogitsWarper

from prewrite import prefix_cache

# Generation-config fields the loop applies itself or that do not change sampling: any other field a model
# sets (repetition_penalty, min_new_tokens, ...) sends its rollouts through generate, which applies it.
_APPLIED = {"bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_p", "top_k",
            "max_length", "max_new_tokens", "use_cache", "output_attentions", "output_hidden_states",
            "transformers_version", "_from_model_config"}  # fmt: skip


def unsupported(policy: PreTrainedModel) -> str | None:
    """Why `policy` cannot be decoded by this loop (then `generate` decodes it), or None."""
    if type(policy).__name__ != "LlamaForCausalLM" or policy.config.model_type != "llama":
        return f"{type(policy).__name__} is not a Llama-architecture model"
    params = list(policy.parameters())
    if params[0].device.type != "cpu":
        return f"the policy is on {params[0].device.type} (the loop is for CPUs)"
    if any(type(layer).__name__ != "LlamaDecoderLayer" for layer in policy.model.layers):
        return "the decoder layers are wrapped (a sharding strategy)"
    linears = [m for m in policy.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    if len(linears) != 7 * len(policy.model.layers) or any(type(m) is not torch.nn.Linear for m in linears):
        return "the linear layers carry adapters (LoRA) or are replaced"
    if any(type(p.data) is not torch.Tensor or hasattr(p, "ds_id") for p in params):
        return "the weights are sharded (DeepSpeed ZeRO-3, FSDP)"
    if policy.training and policy.config.attention_dropout:
        return "attention dropout is on in training mode"
    extra = set(policy.generation_config.to_diff_dict()) - _APPLIED
    if extra:
        return f"the model's generation config sets {sorted(extra)}, which generate applies"
    return None


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor id from /proc/cpuinfo (GenuineIntel, AuthenticAMD, ...), or '' where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


class _Weights:
    """The policy's weights for one rollout: each linear layer as the product to call on [rows, in] inputs."""

    def __init__(self, policy: PreTrainedModel, rows: int):
        # MKL's packed layout reads the weights of a decoding step faster than F.linear on an Intel Xeon
        # (29.7 against 35.2 ms) and slower on an AMD EPYC (69.7 against 56.7 ms): MKL runs its tuned
        # kernels on Intel CPUs only (experiments/step_floor*.json, issue 17)
        packed = policy.dtype == torch.float32 and torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"

        def product(linear: torch.nn.Linear):
            w, b = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
            if not packed:
                return lambda x: F.linear(x, w, b)
            p = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
            return lambda x: torch.ops.mkl._mkl_linear(x, p, w, b, rows)

        self.layers = []
        for layer in policy.model.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append({
                "norm1": (layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon),
                "q": product(a.q_proj), "k": product(a.k_proj), "v": product(a.v_proj), "o": product(a.o_proj),
                "norm2": (layer.post_attention_layernorm.weight.detach(),
                          layer.post_attention_layernorm.variance_epsilon),
                "gate": product(m.gate_proj), "up": product(m.up_proj), "down": product(m.down_proj),
                "act": m.act_fn,
            })  # fmt: skip
        norm = policy.model.norm
        self.norm = (norm.weight.detach(), norm.variance_epsilon)
        self.head = product(policy.lm_head)
        self.embed = policy.model.embed_tokens.weight.detach()


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: x * cos + rotate_half(x) * sin, rotate_half as a roll by half the width with the
    sign folded into the sine."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def _draw(logits: torch.Tensor, top_p: float, do_sample: bool, temperature: float) -> torch.Tensor:
    """The next token of each row [rows]: argmax, or a draw from softmax(logits / temperature) kept to its
    top-p mass, by the inverse CDF (one uniform number per row)."""
    if not do_sample:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_p < 1.0:
        logits = TopPLogitsWarper(top_p)(None, logits)
    cdf = torch.softmax(logits, dim=-1).cumsum_(-1)
    # scaled by the row's total, so rounding in the cumulative sum cannot put the draw past the last token
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=cdf.size(1) - 1)


@torch.no_grad()
def decode(
    policy: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    num_generations: int,
    max_new_tokens: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
) -> torch.Tensor:
    """Completions [P * G, T] of the left-padded prompts [P, L], G a prompt in a row, as `generate` returns
    them past the prompt: decoding stops when every row has produced an end token (the generation config's),
    and a row that ended is continued with the pad id."""
    config = policy.config
    eos = policy.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    # The prompts once each, through the model's own forward: the first token's logits and the cache.
    logits, layers = prefix_cache.run_prefixes(
        policy, prompt_ids, prompt_mask, prefix_cache.left_padded_positions(prompt_mask)
    )
    rows = torch.arange(len(prompt_ids)).repeat_interleave(num_generations)
    n, width = len(rows), prompt_ids.size(1)
    cache = []
    for k, v in layers:
        keys = k.new_empty(n, kv_heads, width + max_new_tokens, dim)
        values = torch.empty_like(keys)
        keys[:, :, :width], values[:, :, :width] = k[rows], v[rows]
        cache.append((keys, values))
    # Attend to every column but a left-padded prompt's padding (no mask at all when nothing is padded).
    padding = None
    if bool((prompt_mask == 0).any()):
        padding = torch.zeros(n, 1, 1, width + max_new_tokens, dtype=cache[0][0].dtype)
        padding[:, 0, 0, :width].masked_fill_(prompt_mask[rows] == 0, float("-inf"))
    # Each row's rotary angles at its own positions (its real tokens counted, as generate counts them).
    start = prompt_mask.sum(1)[rows]
    positions = start.unsqueeze(1) + torch.arange(max_new_tokens)
    cos, sin = policy.model.rotary_emb(layers[0][0], positions)  # [n, T, dim]
    sin = torch.cat((-sin[..., : dim // 2], sin[..., dim // 2 :]), dim=-1)

    weights = _Weights(policy, n)
    groups = heads // kv_heads
    token = _draw(logits[rows, -1], top_p, do_sample, temperature)
    out = [token]
    ended = torch.isin(token, eos)
    for t in range(1, max_new_tokens):
        if bool(ended.all()):
            break
        slot = width + t - 1  # the cache column of the token fed this step
        h = weights.embed[token]  # [n, hidden]
        c, s = cos[:, t - 1].view(n, 1, 1, dim), sin[:, t - 1].view(n, 1, 1, dim)
        bias = padding[..., : slot + 1] if padding is not None else None
        for w, (keys, values) in zip(weights.layers, cache, strict=True):
            x = F.rms_norm(h, (h.size(-1),), *w["norm1"])
            q = _rotate(w["q"](x).view(n, kv_heads, groups, dim), c, s)
            keys[:, :, slot] = _rotate(w["k"](x).view(n, kv_heads, 1, dim), c, s).squeeze(2)
            values[:, :, slot] = w["v"](x).view(n, kv_heads, dim)
            # each kv head attended by its group of query heads as one query block (transformers'
            # repeat_kv order): 1.5x faster than sdpa's enable_gqa at one token a row
            attn = F.scaled_dot_product_attention(q, keys[:, :, : slot + 1], values[:, :, : slot + 1], attn_mask=bias)
            h = h + w["o"](attn.view(n, heads * dim))
            x = F.rms_norm(h, (h.size(-1),), *w["norm2"])
            h = h + w["down"](w["act"](w["gate"](x)) * w["up"](x))
        logits = weights.head(F.rms_norm(h, (h.size(-1),), *weights.norm))
        token = _draw(logits, top_p, do_sample, temperature).masked_fill_(ended, pad_token_id)
        out.append(token)
        ended |= torch.isin(token, eos)
    return torch.stack(out, dim=1)
