#!/usr/bin/env bash
# Issue 23, per input: the same training budget (steps x examples_per_step x num_generations task-model
# answers) spent on a task-level rewriter and on a per-input one, on sentence-level SST-2 (constrained),
# each evaluated on the same dev and test rows.
#   SEEDS="0 1 2" bash experiments/per_input.sh [outputs folder]   then: python experiments/transfer_table.py <outputs folder>
# MODES="input" trains one mode only; ARGS="reward=label_prob" adds training overrides (word-split);
# TASK_ARGS="task.stratify=true" adds task overrides to training and evaluation alike.
set -euo pipefail
OUT=${1:-outputs/per_input}
TASK=${TASK:-sst2_sentences}
TRAIN=(task="$TASK" task_backend.constrained=true steps=10 eval_every=5 examples_per_step=8
       algorithm.num_generations=4 dev_examples=64 algorithm.learning_rate=5.0e-5 paths.outputs_dir="$OUT"
       keep_checkpoint_after_fit=false)
for seed in ${SEEDS:-0 1 2}; do
  for mode in ${MODES:-task input}; do
    # shellcheck disable=SC2086
    python -m prewrite.train "${TRAIN[@]}" ${TASK_ARGS:-} ${ARGS:-} rewrite_mode="$mode" seed="$seed" hydra.run.dir="$OUT/train/$mode/seed$seed"
    # shellcheck disable=SC2086
    python -m prewrite.evaluate rewriter_path="$OUT/train/$mode/seed$seed" task="$TASK" ${TASK_ARGS:-} seed="$seed" \
      task_backend.constrained=true num_samples=4 dev_examples=128 test_examples=500 \
      paths.outputs_dir="$OUT" hydra.run.dir="$OUT/eval/${TASK}_$mode/seed$seed"
  done
done
