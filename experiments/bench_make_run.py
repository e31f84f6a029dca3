"""`make run` wall time, as a user on this machine gets it after `make setup` (the embedded model
already converted once), each run into a fresh outputs folder (no response cache carried over).

`--avx2` caps oneDNN, ATen and MKL at AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY,
MKL_ENABLE_INSTRUCTIONS): on a CPU with AMX or AVX512 this is what a user of an AVX2-only CPU runs,
and precision `auto` then picks fp32 as it would there. Reported per run: wall time, the precision
chosen, the median step time and its parts (from MLflow), the best dev score against the initial
instruction's, and which one the run selected. Repetition r trains with seed r, so the dev results of
the repetitions are three seeds.

    python experiments/bench_make_run.py --repeats 1 --avx2 --out experiments/bench_make_run_avx2.json
    python experiments/bench_make_run.py --repeats 1 --out experiments/bench_make_run_native.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
PARTS = ("step", "rollout", "reward", "update")
CAPABILITY = (
    "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.ops.mkldnn._is_mkldnn_bf16_supported(),"
    " torch.cpu._is_amx_tile_supported())"
)


def capability_line(env: dict[str, str]) -> str:
    """What torch sees in the runs' environment: the CPU capability, whether oneDNN computes bf16, and AMX
    (what `auto` precision decides by)."""
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", CAPABILITY], env=os.environ | env, capture_output=True, text=True
    )
    capability, bf16, amx = proc.stdout.split()
    return f"get_cpu_capability()={capability}, _is_mkldnn_bf16_supported()={bf16}, _is_amx_tile_supported()={amx}"


def one_run(env: dict[str, str], args: str, seed: int, keep: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_make_run-") as tmp:
        out = keep / f"seed{seed}" if keep else tmp  # kept: to score the run's choices on test afterwards
        start = time.perf_counter()
        proc = subprocess.run(
            ["make", "run", f"ARGS=paths.outputs_dir={out} seed={seed} {args}"],
            cwd=ROOT, env=os.environ | env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        client = MlflowClient(f"sqlite:///{out}/mlflow.db")
        (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
        history = {p: [m.value for m in client.get_metric_history(run.info.run_id, f"train/time/{p}_s")] for p in PARTS}
        metrics = run.data.metrics
        return {
            "seed": seed,
            "wall_s": wall,
            "precision": run.data.params.get("hardware.precision"),
            "precision_reason": run.data.params.get("precision_auto.hardware.precision"),
            "median_s": {p: statistics.median(v[1:] or v) for p, v in history.items()},  # step 1 warms up
            "dev_best": metrics.get("dev/best/accuracy"),
            "dev_initial": metrics.get("dev/initial_instruction/accuracy"),
            "selected": run.data.tags.get("prewrite.selected"),
            "best_rewrite": run.data.tags.get("prewrite.best_rewrite"),
            # the greedy rewrite's dev score at each evaluation: what another eval_every would have seen
            "dev_curve": {m.step: m.value for m in client.get_metric_history(run.info.run_id, "dev/accuracy")},
            "estimate_line": next((ln for ln in proc.stdout.splitlines() if ln.startswith("Step 1 took")), None),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--avx2", action="store_true", help="cap the CPU kernels at AVX2 (see above)")
    parser.add_argument("--args", default="", help="more training overrides, as make run ARGS=...")
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep each run's outputs in KEEP/seed<r>")
    args = parser.parse_args()
    env = AVX2 if args.avx2 else {}
    runs = []
    for rep in range(args.repeats):
        runs.append(one_run(env, args.args, seed=rep, keep=args.keep))
        print(f"run {rep}: " + json.dumps(runs[-1]), flush=True)
    summary = {"wall_s_median": statistics.median(r["wall_s"] for r in runs), "runs": runs}
    summary["machine"] = {
        "platform": platform.platform(), "env": env, "cpus": os.cpu_count(), "capability": capability_line(env),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
