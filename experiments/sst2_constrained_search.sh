#!/bin/bash
# Issue 18: a search baseline in the constrained setting (conf/experiment/sst2_sentences_constrained.yaml)
# at the task-model requests one training plus PRewrite-S's selection spent (3,584: 15 steps x 8 x 16,
# the initial instruction and four greedy evaluations on 128 dev rows, and 8 x 128 for PRewrite-S),
# selected on the same 128 dev rows, then test once on the same 500 rows as the evaluations of
# experiments/sst2_constrained.sh. METHOD=ape|opro|gepa. Results: experiments/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${METHOD:-opro}
OUT=${OUT:-outputs/sst2_constrained}
for seed in 0 1 2; do
  .venv/bin/python -m prewrite.search experiment=sst2_sentences_constrained method=$METHOD budget=3584 \
    dev_examples=128 test_examples=500 seed=$seed "hydra.run.dir=$OUT/${METHOD}_seed$seed"
done
