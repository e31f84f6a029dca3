"""How far an instruction that names a label moves the task model's constrained answers, read plainly and
with contextual calibration (task_backend.content_free_inputs), on dev rows: accuracy and the share of
each label per instruction.

    python experiments/label_shift.py [--task sst2_sentences] [--rows 48]
"""

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from prewrite.backends import build_backend
from prewrite.rewards import RewriteScorer
from prewrite.tasks import load_task

CONF = Path(__file__).resolve().parents[1] / "conf"
CONTENT_FREE = ["N/A", "", "[MASK]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2_sentences")
    parser.add_argument("--rows", type=int, default=48)
    args = parser.parse_args()
    task = load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / f"{args.task}.yaml")))
    rows = task.splits["dev"][: args.rows]
    labels = list(task.labels.values())
    instructions = [task.instruction] + [f"The answer I'm looking for is {label}." for label in labels]
    results = []
    for content_free in ([], CONTENT_FREE):
        cfg = OmegaConf.load(CONF / "task_backend" / "hf.yaml")
        cfg.max_new_tokens, cfg.content_free_inputs = 4, content_free  # constrained: nothing is decoded
        scores = RewriteScorer(task, build_backend(cfg, None, task), ["accuracy"], [1.0])(instructions, rows)
        for instruction, accuracy, answers in zip(instructions, scores.rewards, scores.answers, strict=True):
            share = {label: round(sum(a == label for a in answers) / len(answers), 3) for label in labels}
            results.append(
                {
                    "calibrated": bool(content_free),
                    "instruction": instruction,
                    "accuracy": round(accuracy, 3),
                    "answer_share": share,
                }
            )
            print(json.dumps(results[-1]))


if __name__ == "__main__":
    main()
