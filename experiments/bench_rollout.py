"""Rollout engines in real training: seconds per step spent sampling the rewrites (`train/time/rollout_s`),
copying the updated weights into the engine (`train/time/sync_s`) and updating the policy (`train/time/update_s`,
to see whether an in-process vLLM engine slows the torch work beside it), for `rollout=hf` and
`rollout=vllm` in bf16 and fp32.

Each configuration is a real `python -m prewrite.train` run with the default rollout settings
(`num_generations` 8, `max_completion_length` 48, temperature 1.0) and little scoring work
(`examples_per_step` 2, dev evaluations only at the start and the end); the figures are read back
from the run's MLflow store. Step 1 is reported apart (first-call warm-up); the medians cover steps
2..steps. Runs of different configurations alternate, so machine noise hits all of them alike. Run
from an environment with vLLM (`make setup-vllm`):

    python experiments/bench_rollout.py --steps 8 --repeats 2 --out bench_rollout.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "hf": ["rollout=hf"],
    "vllm_bf16": ["rollout=vllm", "rollout.dtype=bfloat16"],
    "vllm_fp32": ["rollout=vllm", "rollout.dtype=float32"],
}
METRICS = [
    "train/time/rollout_s",
    "train/time/sync_s",
    "train/time/update_s",
    "train/time/step_s",
    "train/completion_length",
]


def run(name: str, steps: int, outputs: Path) -> dict:
    cmd = [
        sys.executable, "-m", "prewrite.train", *CONFIGS[name],
        f"steps={steps}", f"eval_every={steps}", "examples_per_step=2", "dev_examples=4",
        "save_checkpoints=false", "log_rewriter_to_mlflow=false", "trainer.enable_progress_bar=false",
        f"paths.outputs_dir={outputs}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    run_id = client.search_runs([client.get_experiment_by_name("prewrite-sst2").experiment_id])[0].info.run_id
    history = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in METRICS}
    return {"wall_s": wall, "history": history}


def summary(runs: list[dict]) -> dict:
    out: dict[str, float] = {"wall_s_median": statistics.median(r["wall_s"] for r in runs)}
    for key in METRICS:
        first = [r["history"][key][1] for r in runs]
        rest = [v for r in runs for s, v in r["history"][key].items() if s > 1]
        out[f"{key} step1"] = statistics.median(first)
        out[f"{key} median"] = statistics.median(rest)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {name: [] for name in args.configs}
    for rep in range(args.repeats):
        for name in args.configs:
            with tempfile.TemporaryDirectory() as outputs:
                runs[name].append(run(name, args.steps, Path(outputs)))
            print(f"rep {rep} {name}: {runs[name][-1]['wall_s']:.0f} s", flush=True)

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version},
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": {name: summary(r) for name, r in runs.items()},
        "runs": runs,
    }
    print(f"\n| config | {' | '.join(result['summary'][args.configs[0]])} |")
    print(f"|---|{'---|' * len(result['summary'][args.configs[0]])}")
    for name, s in result["summary"].items():
        print(f"| {name} | {' | '.join(f'{v:.3f}' for v in s.values())} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
