"""How often should training score its greedy rewrite on dev? Replays the selection of runs trained with
`eval_every=1` (dev scored after every step) as if they had been evaluated every E steps: since dev
evaluations do not change what is trained (tests/test_train_integration.py), a run's dev curve at the
steps that are multiples of E is exactly what `eval_every=E` would have logged. For each E it picks
the best greedy rewrite on the run's dev rows (ties: the earlier; the initial instruction wins unless
beaten, as training does), then scores every distinct pick on *held-out* dev rows: dev rows the runs
never scored, so more candidates cannot win there just by fitting the 64 selection rows.

    python experiments/eval_every_selection.py /work/exp/every1 --every 5 2 1 --heldout 300 \
        --out experiments/eval_every_selection.json
    ... --split test --heldout 500  (once, for the setting dev chose)
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


def selections(rows: list[dict], metric: str, every: list[int]) -> dict[int, dict]:
    """E -> {"step", "instruction", "dev"}: what a run evaluated every E steps hands the user."""
    initial = next(r for r in rows if r["split"] == "initial")
    dev = [r for r in rows if r["split"] == "dev"]
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
    parser.add_argument("--dev-examples", type=int, default=64, help="the runs' dev_examples")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for training (task, task_backend)")
    args = parser.parse_args()
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
        picks = selections(rows, task.metric, args.every)
        if args.split == "dev":  # every dev row but the ones the run selected on, a seeded sample of them
            used = {json.dumps(r, sort_keys=True) for r in task.eval_rows("dev", args.dev_examples, seed)}
            rest = [r for r in task.splits["dev"] if json.dumps(r, sort_keys=True) not in used]
            rng = np.random.default_rng([seed, 1234])
            idx = rng.choice(len(rest), size=min(args.heldout, len(rest)), replace=False)
            eval_rows = [rest[i] for i in sorted(idx)]
        else:  # the same test rows for every seed
            eval_rows = task.eval_rows("test", args.heldout, 0)
        initial = next(r["rewrite"] for r in rows if r["split"] == "initial")
        texts = list(dict.fromkeys([initial, *(p["instruction"] for p in picks.values())]))
        scores = dict(zip(texts, scorer(texts, eval_rows).metrics[task.metric], strict=True))
        curve = {r["step"]: r[task.metric] for r in rows if r["split"] == "dev"}
        initial_dev = next(r[task.metric] for r in rows if r["split"] == "initial")
        entry = {"seed": seed, "dev_curve": curve, "initial": {"dev": initial_dev, "heldout": scores[initial]}}
        entry["picks"] = {e: p | {"heldout": scores[p["instruction"]]} for e, p in picks.items()}
        result["seeds"].append(entry)
        print(f"seed {seed}: initial dev {entry['initial']['dev']:.3f} {args.split} {scores[initial]:.3f}")
        for e, p in entry["picks"].items():
            scored = f"dev {p['dev']:.3f} {args.split} {p['heldout']:.3f}"
            print(f"  every {e}: step {p['step']} {scored}", repr(p["instruction"]))
    result["machine"] = {"platform": platform.platform(), "split": args.split, "rows": len(eval_rows)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
