#!/usr/bin/env bash
# Issue 23, transfer: one rewriter trained on a mixture of three classification tasks, evaluated on two
# tasks it never saw (zero task-model requests on them before test for PRewrite-I), 3 seeds.
#   bash experiments/transfer.sh [outputs folder]     then: python experiments/transfer_table.py <outputs folder>
# SEEDS (default 0 1 2), MEMBERS, UNSEEN; ARGS: overrides for the trainings (e.g. ARGS=dev_examples=128);
# BACKEND: task-model overrides for the trainings and the evaluations alike, e.g. contextual calibration:
#   BACKEND='task_backend.content_free_inputs=["N/A","","[MASK]"]'
set -euo pipefail
set -f  # ARGS and BACKEND are split into overrides, never globbed
OUT=${1:-outputs/transfer}
MEMBERS=${MEMBERS:-[ag_news,trec,subj]}
UNSEEN=${UNSEEN:-mr cr}
TRAIN=(task=mixture "task.members=$MEMBERS" task_backend.constrained=true steps=15 eval_every=5
       examples_per_step=8 dev_examples=32 algorithm.learning_rate=5.0e-5 paths.outputs_dir="$OUT"
       keep_checkpoint_after_fit=false)
for seed in ${SEEDS:-0 1 2}; do
  # shellcheck disable=SC2086  # ARGS is a list of overrides
  python -m prewrite.train "${TRAIN[@]}" ${ARGS:-} ${BACKEND:-} seed="$seed" hydra.run.dir="$OUT/train/seed$seed"
  for task in $UNSEEN; do
    # shellcheck disable=SC2086
    python -m prewrite.evaluate rewriter_path="$OUT/train/seed$seed" task="$task" seed="$seed" \
      task_backend.constrained=true ${BACKEND:-} num_samples=4 dev_examples=128 test_examples=500 \
      paths.outputs_dir="$OUT" hydra.run.dir="$OUT/eval/$task/seed$seed"
  done
done
