"""Task-LLM scoring throughput: examples scored per second by each way of running the task LLM.

The workload is what one evaluation of an instruction costs: `--rows` SST-2 test rows with the task's
initial instruction, answered greedily by the embedded model (8 new tokens). Methods, timed in turns
(each repetition runs every method once, so machine noise hits all of them alike):

- naive: one prompt at a time through transformers' generate, as the earlier PPO code scored;
- hf: the hf backend, batched (32), each rewrite's shared prompt prefix computed once;
- hf_constrained: the hf backend choosing between the label verbalizers (one forward pass);
- vllm: the in-process vllm backend, hosted in a child process because vLLM binds the OpenMP
  threads of the process it runs in, which would slow the transformers methods timed here;
- vllm_constrained: the same engine choosing between the label verbalizers (one generated token with
  their log-probabilities);
- openai: the openai backend against `vllm.entrypoints.openai.api_server` on 127.0.0.1;
- cache_cold / cache_warm: the hf backend behind the response cache, first pass on an empty cache
  file, then the identical pass served from it;
- forward: one batched forward pass over the same whole prompts and nothing else, the compute floor
  without prefix sharing (hf and hf_constrained below it: what sharing the prefix saves).

Every transformers method runs in `--dtype` (default auto: fp32 on a CPU, as the harness chooses;
`--dtype bfloat16` measures what bf16 would give on this CPU); vllm, vllm_constrained and openai run
`--vllm-dtype` (default bfloat16; skip them with --skip-vllm).

Each method's parsed answers are compared with the naive loop's (agreement rate). Run from an
environment with vLLM (`make setup-vllm`):

    python experiments/bench_task_eval.py --rows 256 --repeats 3 --out experiments/bench_task_eval.json
    python experiments/bench_task_eval.py --dtype float32 --skip-vllm --out experiments/bench_task_eval_fp32.json
    python experiments/bench_task_eval.py --dtype float32 --vllm-dtype float32 \
        --out experiments/bench_task_eval_fp32_vllm.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from prewrite import model_zoo, precision, prefix_cache
from prewrite.backends.cache import CachedBackend, ResponseCache
from prewrite.backends.hf import HFBackend
from prewrite.backends.openai import OpenAIBackend
from prewrite.backends.vllm_server import serve
from prewrite.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
MODEL = "embedded:smollm2-135m-instruct"


def vllm_worker(conn, max_new_tokens: int, dtype: str, labels: list[str]) -> None:
    """Hosts the in-process vllm backend in its own process; answers (constrained, prompts) with
    (seconds, answers), timed inside the process as a caller of the backend would see it."""
    from prewrite.backends.vllm import VLLMBackend

    greedy = VLLMBackend(MODEL, dtype=dtype, max_new_tokens=max_new_tokens)
    chooser = greedy.with_choices(labels)  # the same engine
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        constrained, prompts = msg
        start = time.perf_counter()
        answers = (chooser if constrained else greedy).generate(prompts)
        conn.send((time.perf_counter() - start, answers))


@torch.inference_mode()
def forward_floor(backend: HFBackend, prompts: list[str]) -> list[str]:
    """One forward pass per batch of 32 length-sorted prompts, keeping only the last position's logits."""
    encoded = backend._encode(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    last = prefix_cache.keep_last(1, backend.device)  # as the backend does: an int would slice (prefix_cache)
    for start in range(0, len(order), backend.batch_size):
        idx = order[start : start + backend.batch_size]
        batch = backend.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
        backend.model(**batch, logits_to_keep=last)
    return [""] * len(prompts)  # no answers: the floor is not compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write every timing and the summary as JSON here")
    parser.add_argument("--dtype", default="auto", help="the transformers methods' dtype (auto: as the harness picks)")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out the vllm and openai methods")
    parser.add_argument("--vllm-dtype", default="bfloat16", help="the vllm and openai methods' dtype")
    args = parser.parse_args()
    dtype = precision.resolve_dtype(args.dtype, "cpu")

    task_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "task" / "sst2.yaml"))
    task = load_task(task_cfg)
    rows_used = task.splits["test"][: args.rows]
    prompts = [task.prompt(task.instruction, row) for row in rows_used]
    n_new = task_cfg["max_new_tokens"]
    labels = list(task.labels.values())
    tmp = Path(tempfile.mkdtemp(prefix="bench_task_eval-"))
    startup: dict[str, float] = {}

    def timed_start(name, build):
        start = time.perf_counter()
        obj = build()
        startup[name] = time.perf_counter() - start
        return obj

    kw = dict(dtype=dtype, batch_size=32, max_new_tokens=n_new)
    naive_backend = timed_start("naive", lambda: HFBackend(MODEL, dtype=dtype, batch_size=1, max_new_tokens=n_new))
    hf = timed_start("hf", lambda: HFBackend(MODEL, **kw))
    constrained = timed_start("hf_constrained", lambda: HFBackend(MODEL, **kw, constrained=True, choices=labels))
    torch_threads = torch.get_num_threads()

    if not args.skip_vllm:
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        start = time.perf_counter()
        worker = ctx.Process(target=vllm_worker, args=(child_conn, n_new, args.vllm_dtype, labels))
        worker.start()
        assert conn.recv() == "ready"
        startup["vllm"] = time.perf_counter() - start

    def run_vllm(constrained, ps):
        conn.send((constrained, ps))
        seconds, answers = conn.recv()
        return seconds, answers

    with contextlib.nullcontext() if args.skip_vllm else timed_server(tmp, startup, args.vllm_dtype) as base_url:
        api = (
            None
            if args.skip_vllm
            else OpenAIBackend(
                "smollm2", base_url=base_url, api_key_env=None, max_new_tokens=n_new, max_concurrency=256
            )
        )
        methods = {
            "naive": lambda: [naive_backend.generate([p])[0] for p in prompts],
            "hf": lambda: hf.generate(prompts),
            "hf_constrained": lambda: constrained.generate(prompts),
            "vllm": None,  # timed inside its process
            "vllm_constrained": None,
            "openai": lambda: api.generate(prompts),
            "cache_cold": None,  # timed in pairs below
            "forward": lambda: forward_floor(hf, prompts),
        }
        if args.skip_vllm:
            del methods["vllm"], methods["vllm_constrained"], methods["openai"]
        times: dict[str, list[float]] = {m: [] for m in [*methods, "cache_warm"]}
        answers: dict[str, list[str]] = {}
        for rep in range(args.repeats):
            for name, run in methods.items():
                if name in ("vllm", "vllm_constrained"):
                    seconds, out = run_vllm(name == "vllm_constrained", prompts)
                elif name == "cache_cold":
                    cached = CachedBackend(hf, ResponseCache(tmp / f"cache-{rep}.sqlite"))
                    start = time.perf_counter()
                    out = cached.generate(prompts)
                    seconds = time.perf_counter() - start
                    start = time.perf_counter()
                    warm = cached.generate(prompts)
                    times["cache_warm"].append(time.perf_counter() - start)
                    answers["cache_warm"] = warm
                    assert cached.hits == len(prompts), "the warm pass was not served from the cache"
                else:
                    start = time.perf_counter()
                    out = run()
                    seconds = time.perf_counter() - start
                times[name].append(seconds)
                answers[name] = out
                print(f"rep {rep} {name:15s} {seconds:8.2f} s", flush=True)
            # After every repetition: a slow run cut short still leaves a complete table behind.
            summary = summarize(task, rows_used, times, answers, startup, torch_threads, rep + 1, dtype)
            print_table(summary)
            if args.out:
                Path(args.out).write_text(json.dumps(summary, indent=2))
    if not args.skip_vllm:
        conn.send(None)
        worker.join(60)


def summarize(task, rows_used, times, answers, startup, torch_threads, repeats, dtype) -> dict:
    """Median time per method, examples per second, speed-up over the naive loop, agreement of the
    parsed answers with the naive loop's, and each method's accuracy against gold."""
    naive_parsed = [task.parse(a) for a in answers["naive"]]
    naive_median = statistics.median(times["naive"])
    results = []
    for name, ts in times.items():
        med = statistics.median(ts)
        parsed = None if name == "forward" else [task.parse(a) for a in answers[name]]
        results.append(
            {
                "method": name,
                "median_s": med,
                "examples_per_s": len(rows_used) / med,
                "speedup_vs_naive": naive_median / med,
                # Ratio inside each repetition (naive and this method minutes apart): robust to load drifting
                # over a long run, which the ratio of medians is not.
                "speedup_per_repetition": [n / t for n, t in zip(times["naive"], ts, strict=True)],
                "agreement_with_naive": None
                if parsed is None
                else sum(a == b for a, b in zip(parsed, naive_parsed, strict=True)) / len(rows_used),
                # Constrained answers always name a label; the naive loop's often name none. Agreement on
                # the rows where the naive loop did name one separates those two effects.
                "agreement_where_naive_labelled": None
                if parsed is None
                else statistics.mean(a == b for a, b in zip(parsed, naive_parsed, strict=True) if b is not None),
                "accuracy": None
                if parsed is None
                else sum(p == task.gold(r) for p, r in zip(parsed, rows_used, strict=True)) / len(rows_used),
                "runs_s": ts,
                "startup_s": startup.get(name),
            }
        )
    return {
        "rows": len(rows_used),
        "repeats": repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch_threads} threads in the timing process), CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "dtype": dtype,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": results,
    }


def print_table(summary: dict) -> None:
    print(f"{summary['rows']} rows, {summary['repeats']} repetitions, {summary['machine']}, {summary['date']}")
    header = [
        "method",
        "median s",
        "examples/s",
        "vs naive (medians)",
        "vs naive per repetition",
        "agreement with naive",
        "... where naive named a label",
        "accuracy",
        "start-up s",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in summary["results"]:
        cells = [r["agreement_with_naive"], r["agreement_where_naive_labelled"], r["accuracy"], r["startup_s"]]
        agree, labelled, acc, start = (
            "-" if v is None else f"{v:.3f}" if i < 3 else f"{v:.0f}" for i, v in enumerate(cells)
        )
        per_rep = " / ".join(f"{x:.1f}x" for x in r["speedup_per_repetition"])
        row = [r["method"], f"{r['median_s']:.3f}", f"{r['examples_per_s']:.1f}", f"{r['speedup_vs_naive']:.1f}x"]
        print("| " + " | ".join([*row, per_rep, agree, labelled, acc, start]) + " |", flush=True)


@contextlib.contextmanager
def timed_server(tmp: Path, startup: dict[str, float], dtype: str):
    """The vLLM OpenAI server for the openai method, its start-up time recorded."""
    start = time.perf_counter()
    with serve(model_zoo.resolve(MODEL), "smollm2", tmp / "server.log", dtype=dtype) as url:
        startup["openai"] = time.perf_counter() - start
        yield url


if __name__ == "__main__":
    main()
