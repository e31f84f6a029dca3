"""Issue 17: how far below TRL's GRPO step ours can go on this CPU, from the floors of the step's parts.

A step is rollout + scoring + update, and bench_step.py's scoring is one object shared by both sides, so
the lowest ratio ours / TRL is (its scoring + our rollout's floor + our update's floor) / TRL's step.
Measured here in fp32 on the embedded model, in bench_step.py's setup (the meta prompt around SST-2's
instruction, G rewrites of at most max_completion_length tokens, a reference model):
- rollout: HFRollout's whole rollout, and each decoding step's linear layers alone (G rows through every
  weight matrix: the weights are read once per step), through F.linear and through the alternatives torch
  offers on a CPU (MKL's packed weights; q/k/v and gate/up fused into one matrix each), beside a read of
  the same bytes (the memory bound) and a large product (the compute bound);
- update: the reference pass, the policy's forward and backward, and the optimizer step, on that rollout.

    PYTHONPATH=. python experiments/step_floor.py --step-json experiments/bench_step_fp32_shared_head.json \
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

from prewrite import model_zoo
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
    body_bytes = sum(w.numel() * w.element_size() for w in weights)
    flat = torch.randn(body_bytes // 4)
    out["read_same_bytes"] = seconds(flat.sum, repeats)
    out["body_weight_bytes"] = body_bytes
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    out["large_product_gflops"] = 2 * 512 * 576 * 1536 / seconds(lambda: a @ b, repeats * 10) / 1e9
    return out


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

    engine = HFRollout(policy, tokenizer)
    rollouts = []

    def sample():
        rollouts.append(engine.generate([ids], algo.num_generations, algo.max_completion_length, algo.temperature))

    rollout_s = seconds(sample, args.repeats)
    rollout = max(rollouts, key=lambda r: r.completion_ids.size(1))  # the update on the longest
    decoding_steps = statistics.median(r.completion_ids.size(1) for r in rollouts)  # until every row ended
    linears = decoding_linears(policy, algo.num_generations, args.repeats)
    update = update_parts(policy, rollout, args.repeats)

    bench = json.loads(Path(args.step_json).read_text())["summary"]
    best_linears = min(v for k, v in linears.items() if k in ("f_linear", "fused_qkv_gate_up", "mkl_packed"))
    rollout_floor = decoding_steps * (best_linears + linears["lm_head"])
    update_floor = sum(update.values())
    floor = bench["ours"]["reward"] + rollout_floor + update_floor
    summary = {
        "rollout_s": rollout_s,
        "rollout_floor_s": rollout_floor,
        "update_floor_s": update_floor,
        "scoring_s (bench_step, ours)": bench["ours"]["reward"],
        "trl_step_s (bench_step)": bench["trl"]["step"],
        "step_floor_s": floor,
        "ratio_floor_over_trl": floor / bench["trl"]["step"],
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
        "decoding_linears_per_step_s": linears,
        "update_s": update,
        "summary": summary,
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
