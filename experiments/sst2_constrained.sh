#!/bin/bash
# Issue 18: PRewrite on sentence-level SST-2 with constrained scoring (conf/experiment/sst2_sentences_constrained.yaml).
# 1. the headroom probe on dev; 2. three trainings (seeds 0-2), selected on dev; 3. each evaluated once on
# a seeded test subset. Results: experiments/RESULTS.md. About 50 minutes on a 2-core CPU with AMX.
# ARGS: overrides for the trainings (e.g. ARGS=algorithm.learning_rate=5e-5); PROBE=0 skips step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/sst2_constrained}
ARGS=${ARGS:-}
if [ "${PROBE:-1}" = 1 ]; then
  .venv/bin/python -m prewrite.probe experiment=sst2_sentences_constrained num_samples=16 dev_examples=128 \
    'instructions=["You are a movie critic. Say whether the review below is positive or negative.","Sentiment (positive/negative):"]' \
    "hydra.run.dir=$OUT/probe"
fi
for seed in 0 1 2; do
  # shellcheck disable=SC2086  # ARGS is a list of overrides
  .venv/bin/python -m prewrite.train experiment=sst2_sentences_constrained $ARGS seed=$seed "hydra.run.dir=$OUT/seed$seed"
done
for seed in 0 1 2; do
  .venv/bin/python -m prewrite.evaluate experiment=sst2_sentences_constrained rewriter_path=$OUT/seed$seed \
    seed=$seed dev_examples=128 test_examples=500 "hydra.run.dir=$OUT/eval_seed$seed"
done
