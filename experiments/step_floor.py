"""Issue 17: how far below TRL's GRPO step ours can go on this CPU, from the floors of the step's parts.

A step is rollout + scoring + update, and bench_step.py's scoring is one object shared by both sides, so
the lowest ratio ours / TRL is (its scoring + our rollout's floor + our update's floor) / TRL's step.
Measured here in fp32 on the embedded model, in bench_step.py's setup (the meta prompt around SST-2's
instruction, G rewrites of at most max_completion_length tokens, a reference model):
- rollout: HFRollout's whole rollout (by the decoding loop, and by transformers' generate), generate with
  transformers' preallocated StaticCache in place of the DynamicCache, and each decoding step's linear layers
  alone (G rows through every weight matrix: the weights are read once per step), through F.linear and
  through the alternatives torch offers on a CPU (MKL's packed weights; q/k/v and gate/up fused into one
  matrix each), beside a read of the same bytes (the memory bound) and a large product (the compute bound);
  then the rest of a decoding step (norms, rotary, cache write, attention, activation, residuals, sampling)
  in the fewest eager ops torch has, as a lower bound on what any decoding loop spends besides its products;
- update: the reference pass, the policy's forward and backward, and the optimizer step, on that rollout.

    PYTHONPATH=. python experiments/step_floor.py --step-json experiments/bench_step_fp32_decoding_loop.json \
        --out experiments/step_floor.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from transformers import StaticCache

from prewrite import model_zoo, prefix_cache
from prewrite.algorithms.logprobs import completion_logprobs
from prewrite.rollout.base import rewriter_prompt
from prewrite.rollout.hf_rollout import HFRollout
from prewrite.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoding_linears(model, rows: int, repeats: int) -> dict[str, float]:
    """Seconds per decoding step spent in the linear layers by each way of computing them, and the bounds."""
    layers = model.model.layers
    weights = [m.weight.detach() for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    head = model.lm_head.weight.detach()
    hidden = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in [*weights, head]}

    def fused(layer) -> list[torch.Tensor]:
        a, m = layer.self_attn, layer.mlp
        return [
            torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
            a.o_proj.weight.detach(),
            torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach(),
            m.down_proj.weight.detach(),
        ]

    fused_weights = [w for layer in layers for w in fused(layer)]
    out = {
        "f_linear": seconds(lambda: [F.linear(hidden[w.shape[1]], w) for w in weights], repeats),
        "fused_qkv_gate_up": seconds(lambda: [F.linear(hidden[w.shape[1]], w) for w in fused_weights], repeats),
        "lm_head": seconds(lambda: F.linear(hidden[head.shape[1]], head), repeats),
    }
    if torch.backends.mkl.is_available():
        packed = [(w, torch.ops.mkl._mkl_reorder_linear_weight(w, rows)) for w in weights]
        out["mkl_packed"] = seconds(
            lambda: [torch.ops.mkl._mkl_linear(hidden[w.shape[1]], p, w, None, rows) for w, p in packed], repeats
        )
        packed_head = torch.ops.mkl._mkl_reorder_linear_weight(head, rows)
        out["lm_head_mkl_packed"] = seconds(
            lambda: torch.ops.mkl._mkl_linear(hidden[head.shape[1]], packed_head, head, None, rows), repeats
        )
    body_bytes = sum(w.numel() * w.element_size() for w in weights)
    flat = torch.randn(body_bytes // 4)
    out["read_same_bytes"] = seconds(flat.sum, repeats)
    out["body_weight_bytes"] = body_bytes
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    out["large_product_gflops"] = 2 * 512 * 576 * 1536 / seconds(lambda: a @ b, repeats * 10) / 1e9
    return out


def decoding_other_work(config, rows: int, context: int, repeats: int) -> dict[str, float]:
    """Seconds per decoding step of the work between the products, each part in the fewest eager ops torch
    offers (fused rms_norm, rotary as two products and a cat, a preallocated cache written in place, sdpa
    with grouped keys, and a sampler drawing one number per row by the inverse CDF): a lower bound on it for
    any decoding loop without a compiler, with the context at its longest (prompt + completion)."""
    heads, kv_heads, width = config.num_attention_heads, config.num_key_value_heads, config.hidden_size
    dim, eps = width // heads, config.rms_norm_eps
    x, weight = torch.randn(rows, 1, width), torch.ones(width)
    q, k, v = torch.randn(rows, heads, 1, dim), torch.randn(rows, kv_heads, 1, dim), torch.randn(rows, kv_heads, 1, dim)
    cos, sin = torch.randn(1, 1, 1, dim), torch.randn(1, 1, 1, dim)
    keys, values = torch.zeros(rows, kv_heads, context, dim), torch.zeros(rows, kv_heads, context, dim)
    slot = torch.tensor([context - 1])
    gate, up = torch.randn(rows, 1, config.intermediate_size), torch.randn(rows, 1, config.intermediate_size)
    logits = torch.randn(rows, config.vocab_size)

    def rotate(t: torch.Tensor) -> torch.Tensor:
        half = t.shape[-1] // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin

    def layer() -> None:
        F.rms_norm(x, (width,), weight, eps)
        keys.index_copy_(2, slot, rotate(k))
        values.index_copy_(2, slot, v)
        attn = F.scaled_dot_product_attention(rotate(q), keys, values, enable_gqa=True)
        residual = x + attn.transpose(1, 2).reshape(rows, 1, width)
        F.rms_norm(residual, (width,), weight, eps)
        F.silu(gate) * up
        residual + x  # x stands for the down projection's output

    def sample() -> None:
        cdf = torch.softmax(logits, dim=-1).cumsum_(-1)
        torch.searchsorted(cdf, torch.rand(rows, 1))

    out = {
        "layers": seconds(lambda: [layer() for _ in range(config.num_hidden_layers)], repeats * 4),
        "final_norm_and_sampling": seconds(lambda: (F.rms_norm(x, (width,), weight, eps), sample()), repeats * 4),
    }
    out["step"] = out["layers"] + out["final_norm_and_sampling"]
    return out


@torch.no_grad()
def static_cache_rollout(policy, tokenizer, ids: list[int], rows: int, max_new_tokens: int, temperature: float):
    """HFRollout's rollout (the prompt run once for the group) with transformers' preallocated StaticCache."""
    prompt = torch.tensor([ids])
    _, layers = prefix_cache.run_prefixes(policy, prompt[:, :-1], torch.ones_like(prompt[:, :-1]))
    cache = StaticCache(config=policy.config, max_cache_len=len(ids) + max_new_tokens)
    for cache_layer, (k, v) in zip(cache.layers, layers, strict=True):
        cache_layer.update(k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous())
    return policy.generate(
        input_ids=prompt.repeat(rows, 1),
        attention_mask=torch.ones(rows, len(ids), dtype=torch.long),
        past_key_values=cache,
        do_sample=True,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        temperature=temperature,
        top_p=1.0,
        top_k=None,
    )


def update_parts(policy, rollout, repeats: int) -> dict[str, float]:
    """Median seconds of each part of one GRPO update on `rollout` (one micro-batch, as the default)."""
    ref = copy.deepcopy(policy).eval()
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=True)
    ids, mask, n = rollout.input_ids, rollout.attention_mask, rollout.completion_ids.size(1)
    parts: dict[str, list[float]] = {"reference": [], "forward": [], "backward": [], "optimizer": []}
    for rep in range(repeats + 1):  # the first is warm-up
        marks = [time.perf_counter()]
        with torch.no_grad():
            completion_logprobs(ref, ids, mask, n)
        marks.append(time.perf_counter())
        logps = completion_logprobs(policy, ids, mask, n)
        loss = (logps * rollout.completion_mask).sum() / rollout.completion_mask.sum()
        marks.append(time.perf_counter())
        opt.zero_grad()
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        marks.append(time.perf_counter())
        if rep:
            for key, start, end in zip(parts, marks[:-1], marks[1:], strict=True):
                parts[key].append(end - start)
    return {k: statistics.median(v) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-json", required=True, help="bench_step.py's --out: its scoring and TRL's step")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train")
    algo, path = cfg.algorithm, cfg.rewriter.model_name_or_path
    torch.manual_seed(cfg.seed)
    tokenizer = model_zoo.load_tokenizer(path)
    policy = model_zoo.load_model(path, "float32").eval()
    ids, _ = rewriter_prompt(tokenizer, cfg.meta_prompt, load_task(cfg.task).instruction)

    rollouts = []

    def sample(decoding: str):
        engine = HFRollout(policy, tokenizer, decoding)
        return lambda: rollouts.append(
            engine.generate([ids], algo.num_generations, algo.max_completion_length, algo.temperature)
        )

    rollout_s = seconds(sample("auto"), args.repeats)  # the decoding loop
    generate_s = seconds(sample("generate"), args.repeats)
    static_s = seconds(
        lambda: static_cache_rollout(
            policy, tokenizer, ids, algo.num_generations, algo.max_completion_length, algo.temperature
        ),
        args.repeats,
    )
    rollout = max(rollouts, key=lambda r: r.completion_ids.size(1))  # the update on the longest
    decoding_steps = statistics.median(r.completion_ids.size(1) for r in rollouts)  # until every row ended
    linears = decoding_linears(policy, algo.num_generations, args.repeats)
    other = decoding_other_work(
        policy.config, algo.num_generations, len(ids) + algo.max_completion_length, args.repeats
    )
    update = update_parts(policy, rollout, args.repeats)

    bench = json.loads(Path(args.step_json).read_text())["summary"]
    best_linears = min(v for k, v in linears.items() if k in ("f_linear", "fused_qkv_gate_up", "mkl_packed"))
    best_head = min(v for k, v in linears.items() if k.startswith("lm_head"))
    rollout_floor = decoding_steps * (best_linears + best_head)
    update_floor = sum(update.values())
    floor = bench["ours"]["reward"] + rollout_floor + update_floor
    # The products' floor plus the least the rest of each decoding step can cost in eager torch.
    rollout_eager_floor = rollout_floor + decoding_steps * other["step"]
    eager_floor = bench["ours"]["reward"] + rollout_eager_floor + update_floor
    summary = {
        "rollout_s": rollout_s,
        "rollout_generate_s": generate_s,
        "rollout_static_cache_s": static_s,
        "rollout_floor_s": rollout_floor,
        "rollout_eager_floor_s": rollout_eager_floor,
        "update_floor_s": update_floor,
        "scoring_s (bench_step, ours)": bench["ours"]["reward"],
        "trl_step_s (bench_step)": bench["trl"]["step"],
        "step_floor_s": floor,
        "ratio_floor_over_trl": floor / bench["trl"]["step"],
        "step_eager_floor_s": eager_floor,
        "ratio_eager_floor_over_trl": eager_floor / bench["trl"]["step"],
        "rollout_plus_update_for_0.6x_s": 0.6 * bench["trl"]["step"] - bench["ours"]["reward"],
    }
    record = {
        "machine": {
            "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "prompt_tokens": len(ids),
        "decoding_steps": decoding_steps,
        "decoding_linears_per_step_s": linears,
        "decoding_other_work_per_step_s": other,
        "update_s": update,
        "summary": summary,
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
