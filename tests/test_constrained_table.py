"""experiments/constrained_table.py: the issue-18 table pairs each seed's methods on the same test rows."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def _write(out, seed, initial_test, i_test, s_test, searched):
    results = [
        {"method": m, "instruction": m, "dev_accuracy": 0.5, "test_accuracy": t}
        for m, t in [("initial", initial_test), ("prewrite_i", i_test), ("prewrite_s", s_test)]
    ]
    (out / f"eval_seed{seed}").mkdir(parents=True)
    (out / f"eval_seed{seed}" / "evaluation.json").write_text(json.dumps({"results": results, "candidates": []}))
    for method, (test, test_initial) in searched.items():
        (out / f"{method}_seed{seed}").mkdir()
        result = {"instruction": method, "dev": 0.6, "test": test, "test_initial": test_initial}
        (out / f"{method}_seed{seed}" / "search.json").write_text(json.dumps(result))


def _table(out):
    cmd = [sys.executable, "experiments/constrained_table.py", str(out)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_paired_differences_in_points_over_seeds(tmp_path):
    _write(tmp_path, 0, 0.40, 0.42, 0.50, {"ape": (0.45, 0.40)})
    _write(tmp_path, 1, 0.40, 0.36, 0.48, {"ape": (0.49, 0.40)})
    proc = _table(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "- prewrite_i − initial: +2.0, -4.0 (-1.0 ± 4.2, 2 seeds)" in proc.stdout
    assert "- prewrite_s − ape: +5.0, -1.0 (+2.0 ± 4.2, 2 seeds)" in proc.stdout
    assert "| 1 | 0.500 / 0.400 | 0.500 / 0.360 | 0.500 / 0.480 | 0.600 / 0.490 |" in proc.stdout
    assert "opro" not in proc.stdout  # a method not run is left out, not shown as zero


def test_a_search_on_other_test_rows_is_refused(tmp_path):
    _write(tmp_path, 0, 0.40, 0.42, 0.50, {"opro": (0.45, 0.38)})
    proc = _table(tmp_path)
    assert proc.returncode == 1
    assert "opro_seed0/search.json: the initial instruction scored 0.38 on test, 0.4 in eval_seed0" in proc.stderr
