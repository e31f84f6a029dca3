"""How often should training score its greedy rewrite on dev? Replays the selection of runs trained with
`eval_every=1` (dev scored after every step) as if they had been evaluated every E steps: since dev
evaluations do not change what is trained (tests/test_train_integration.py), a run's dev curve at the
steps that are multiples of E is exactly what `eval_every=E` would have logged. For each E it picks
the best greedy rewrite on the run's dev rows (ties: the earlier; the initial instruction wins unless
beaten, as training does), then scores every distinct pick on *held-out* dev rows: dev rows the runs
never scored, so more candidates cannot win there just by fitting the 64 selection rows.

    python experiments/eval_every_selection.py /work/exp/every1 task_backend.dtype=float32 --every 5 2 1 \
        --heldout 400 --out experiments/eval_every_selection_heldout_dev.json
    ... --every 5 --split test --heldout 1821 --out ...test.json  (once, for the setting dev chose)

Overrides are those of the runs (here the fp32 task model they trained with; `dev_examples` if not 64).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from prewrite import precision
from prewrite.backends import build_backend
from prewrite.rewards import RewriteScorer
from prewrite.selection import or_initial
from prewrite.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def selections(initial: dict, dev: list[dict], metric: str, every: list[int]) -> dict[int, dict]:
    """E -> {"step", "instruction", "dev"}: what a run evaluated every E steps hands the user, from its
    initial-instruction row and its dev rows (one per step)."""
    out = {}
    for e in every:
        seen = [r for r in dev if r["step"] % e == 0]
        best = max(seen, key=lambda r: (r[metric], -r["step"]))
        chosen, is_initial = or_initial(initial["rewrite"], initial[metric], best["rewrite"], best[metric])
        out[e] = {
            "step": None if is_initial else best["step"],
            "instruction": chosen,
            "dev": initial[metric] if is_initial else best[metric],
            "evaluations": len(seen),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="folder of kept runs: <runs>/seed<r>/runs/<task>/<run>/rewrites.jsonl")
    parser.add_argument("--every", type=int, nargs="+", default=[5, 2, 1])
    parser.add_argument("--heldout", type=int, default=300, help="rows to score each pick on")
    parser.add_argument("--split", choices=["dev", "test"], default="dev", help="dev: rows the runs did not score")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for training (task, task_backend)")
    args = parser.parse_intermixed_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["cache.enabled=false", *args.overrides])
    precision.resolve_config(cfg)
    task = load_task(cfg.task)
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [task.metric], [1.0])
    result = {"args": vars(args) | {"runs": str(args.runs), "out": str(args.out)}, "seeds": []}
    for folder in sorted(args.runs.glob("seed*")):
        seed = int(folder.name.removeprefix("seed"))
        (table,) = folder.glob(f"runs/{task.name}/*/rewrites.jsonl")
        rows = [json.loads(line) for line in table.read_text().splitlines()]
        initial = next(r for r in rows if r["split"] == "initial")
        dev = [r for r in rows if r["split"] == "dev"]
        picks = selections(initial, dev, task.metric, args.every)
        if args.split == "dev":  # every dev row but the ones the run selected on, a seeded sample of them
            used = {json.dumps(r, sort_keys=True) for r in task.eval_rows("dev", cfg.dev_examples, seed)}
            rest = [r for r in task.splits["dev"] if json.dumps(r, sort_keys=True) not in used]
            rng = np.random.default_rng([seed, 1234])
            idx = rng.choice(len(rest), size=min(args.heldout, len(rest)), replace=False)
            eval_rows = [rest[i] for i in sorted(idx)]
        else:  # the same test rows for every seed
            eval_rows = task.eval_rows("test", args.heldout, 0)
        texts = list(dict.fromkeys([initial["rewrite"], *(p["instruction"] for p in picks.values())]))
        scores = dict(zip(texts, scorer(texts, eval_rows).metrics[task.metric], strict=True))
        entry = {
            "seed": seed,
            "dev_curve": {r["step"]: r[task.metric] for r in dev},
            "initial": {"dev": initial[task.metric], "heldout": scores[initial["rewrite"]]},
            "picks": {e: p | {"heldout": scores[p["instruction"]]} for e, p in picks.items()},
        }
        result["seeds"].append(entry)
        first = entry["initial"]
        print(f"seed {seed}: initial dev {first['dev']:.3f} {args.split} {first['heldout']:.3f}")
        for e, p in entry["picks"].items():
            scored = f"dev {p['dev']:.3f} {args.split} {p['heldout']:.3f}"
            print(f"  every {e}: step {p['step']} {scored}", repr(p["instruction"]))
    result["machine"] = {"platform": platform.platform(), "split": args.split, "rows": len(eval_rows)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
