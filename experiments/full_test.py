"""Issue 18: the instructions each method already chose on dev, scored once more on the whole test split
(sentence-level SST-2: 1,821 rows, the issue's target set) instead of a run's seeded 500-row subset.
No choice reads these scores: the instructions come from the runs' evaluation.json / search.json. Each
instruction's score on its run's own subset is recomputed from the same per-row results and must equal
what the run recorded (a check that the task model and its scoring are the run's).

    PYTHONPATH=. python experiments/full_test.py experiment=sst2_sentences_constrained \
      --eval prewrite_i=outputs/sst2_15_fp32/eval_seed{seed}:prewrite_i \
      --eval prewrite_s=outputs/sst2_split5/eval_seed{seed}:prewrite_s \
      --search ape=outputs/sst2_fp32_search/ape_seed{seed} --search opro=outputs/sst2_fp32_search/opro_seed{seed} \
      --out experiments/sst2_sentences_constrained/full_test.json
"""

import argparse
import json
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir

from prewrite import precision
from prewrite.backends import build_backend
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]


def chosen(args: argparse.Namespace, seed: int) -> dict[str, tuple[str, float, int]]:
    """label -> (instruction, the run's recorded test score, the run's test rows) for one seed."""
    out = {}
    for spec in args.eval:
        label, rest = spec.split("=", 1)
        folder, row = rest.rsplit(":", 1)
        report = json.loads((Path(folder.format(seed=seed)) / "evaluation.json").read_text())
        hit = next(r for r in report["results"] if r["method"] == row)
        test = next(v for k, v in hit.items() if k.startswith("test_"))
        out[label] = (hit["instruction"], test, report.get("test_rows") or args.subset)
    for spec in args.search:
        label, folder = spec.split("=", 1)
        result = json.loads((Path(folder.format(seed=seed)) / "search.json").read_text())
        out[label] = (result["instruction"], result["test"], result["test_rows"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train config overrides (experiment=...)")
    parser.add_argument("--eval", action="append", default=[], help="LABEL=FOLDER{seed}:ROW of an evaluation.json")
    parser.add_argument("--search", action="append", default=[], help="LABEL=FOLDER{seed} of a search.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--subset", type=int, default=500, help="the runs' test rows, where evaluation.json omits them")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_intermixed_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=args.overrides)
    precision.resolve_config(cfg)
    task = load_task(cfg.task)
    scorer = RewriteScorer(task, build_backend(cfg.task_backend, cfg.cache, task), [task.metric], [1.0])
    full = task.eval_rows("test", None, 0)
    index = {json.dumps(r, sort_keys=True): i for i, r in enumerate(full)}
    table = {"initial": {}}
    for seed in args.seeds:
        picks = {"initial": (task.instruction, None, args.subset)} | chosen(args, seed)
        scores = scorer([p[0] for p in picks.values()], full)
        for (label, (instruction, recorded, n)), values in zip(
            picks.items(), scores.per_example[task.metric], strict=True
        ):
            subset = [index[json.dumps(r, sort_keys=True)] for r in task.eval_rows("test", n, seed)]
            again = statistics.mean(values[i] for i in subset)
            if recorded is not None and abs(again - recorded) > 1e-9:
                raise SystemExit(f"{label}, seed {seed}: {again:.4f} on the run's {n} test rows, recorded {recorded}")
            full_score = statistics.mean(values)
            table.setdefault(label, {})[seed] = {"instruction": instruction, "full": full_score, "subset": again}
            print(f"seed {seed} {label:>10}: full test {full_score:.4f} (subset {again:.4f}) {instruction[:70]!r}")
    report(table, args.seeds, len(full))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": sys_args(args), "test_rows": len(full), "scores": table}, indent=1))


def report(table: dict, seeds: list[int], n: int) -> None:
    print(f"\n| method | {' | '.join(f'seed {s}' for s in seeds)} | mean ± std ({n} rows) | minus initial |")
    print(f"|---|{'---|' * len(seeds)}---|---|")
    for label, by_seed in table.items():
        full = [by_seed[s]["full"] for s in seeds]
        gain = [100 * (by_seed[s]["full"] - table["initial"][s]["full"]) for s in seeds]
        cells = " | ".join(f"{v:.3f}" for v in full)
        print(f"| {label} | {cells} | {mean_std(full, '.3f')} | {mean_std(gain, '+.1f')} |")
    labels = [label for label in table if label != "initial"]
    print("\nPaired differences on the full test split, points (row minus column), per seed and mean ± std:")
    for a in labels:
        for b in labels:
            if a < b:
                diff = [100 * (table[a][s]["full"] - table[b][s]["full"]) for s in seeds]
                print(f"- {a} - {b}: {', '.join(f'{d:+.1f}' for d in diff)} ({mean_std(diff, '+.1f')})")


def mean_std(values: list[float], fmt: str) -> str:
    return f"{statistics.mean(values):{fmt}} ± {format(statistics.stdev(values), fmt.lstrip('+'))}"


def sys_args(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    main()
