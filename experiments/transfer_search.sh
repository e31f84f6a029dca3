#!/usr/bin/env bash
# Issue 23, transfer against search: APE and OPRO spend a budget on each unseen task, selecting on the
# same 128 dev rows (seed s) that prewrite.evaluate scored the transferred rewriter on; their curves say
# how many task-model requests search needs to match it (experiments/transfer_table.py reads them).
#   bash experiments/transfer_search.sh [outputs folder of transfer.sh]
set -euo pipefail
OUT=${1:-outputs/transfer}
for seed in ${SEEDS:-0 1 2}; do
  for task in ${UNSEEN:-mr cr}; do
    for method in ${METHODS:-ape opro}; do
      python -m prewrite.search method="$method" task="$task" seed="$seed" budget="${BUDGET:-1024}" \
        task_backend.constrained=true dev_examples=128 test_examples=500 \
        paths.outputs_dir="$OUT" hydra.run.dir="$OUT/search/$task/$method/seed$seed"
    done
  done
done
