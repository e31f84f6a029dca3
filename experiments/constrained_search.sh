#!/bin/bash
# Issue 18: a search baseline in a constrained setting (EXPERIMENT: conf/experiment/sst2_sentences_constrained.yaml
# or ag_news_constrained.yaml, the same setting on AG News) at the task-model requests one training plus
# PRewrite-S's selection spent (3,584: 15 steps x 8 x 16, the initial instruction and four greedy
# evaluations on 128 dev rows, and 8 x 128 for PRewrite-S), selected on the same 128 dev rows, then test
# once on the same rows as the evaluations of that experiment's trainings (TEST_EXAMPLES, default 500
# seeded rows; null = the whole test split). METHOD=ape|opro|gepa, SEEDS to run a subset.
# Results: experiments/RESULTS.md (table: python experiments/constrained_table.py $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${METHOD:-opro}
EXPERIMENT=${EXPERIMENT:-sst2_sentences_constrained}
OUT=${OUT:-outputs/$EXPERIMENT}
TEST_EXAMPLES=${TEST_EXAMPLES:-500}
for seed in ${SEEDS:-0 1 2}; do
  .venv/bin/python -m prewrite.search experiment=$EXPERIMENT method=$METHOD budget=3584 \
    dev_examples=128 test_examples=$TEST_EXAMPLES seed=$seed "hydra.run.dir=$OUT/${METHOD}_seed$seed"
done
