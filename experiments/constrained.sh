#!/bin/bash
# Issue 18: PRewrite with constrained scoring, three seeds (default: sentence-level SST-2,
# conf/experiment/sst2_sentences_constrained.yaml). 1. the headroom probe on dev (SST-2 only);
# 2. three trainings (seeds 0-2), selected on dev; 3. each evaluated once on a seeded test subset.
# Results: experiments/RESULTS.md (table: python experiments/constrained_table.py $OUT). About 50 minutes on a 2-core CPU with AMX.
# EXPERIMENT: the experiment config (e.g. ag_news_constrained); OUT: where the runs go;
# ARGS: overrides for the trainings (e.g. ARGS=algorithm.learning_rate=5e-5); EVAL_ARGS: overrides for
# the evaluations (e.g. EVAL_ARGS=num_samples=20); TEST_EXAMPLES: test rows (default 500 seeded rows;
# null = the whole split); SEEDS (default 0 1 2); PROBE=0 skips step 1.
set -euo pipefail
cd "$(dirname "$0")/.."
EXPERIMENT=${EXPERIMENT:-sst2_sentences_constrained}
OUT=${OUT:-outputs/$EXPERIMENT}
ARGS=${ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
TEST_EXAMPLES=${TEST_EXAMPLES:-500}
# the probe's hand-written instructions are SST-2's, so by default it runs for SST-2 only
if [ "$EXPERIMENT" = sst2_sentences_constrained ]; then PROBE=${PROBE:-1}; else PROBE=${PROBE:-0}; fi
if [ "$PROBE" = 1 ]; then
  .venv/bin/python -m prewrite.probe experiment="$EXPERIMENT" num_samples=16 dev_examples=128 \
    'instructions=["You are a movie critic. Say whether the review below is positive or negative.","Sentiment (positive/negative):"]' \
    "hydra.run.dir=$OUT/probe"
fi
for seed in ${SEEDS:-0 1 2}; do
  # shellcheck disable=SC2086  # ARGS is a list of overrides
  .venv/bin/python -m prewrite.train experiment="$EXPERIMENT" keep_checkpoint_after_fit=false $ARGS seed=$seed "hydra.run.dir=$OUT/seed$seed"
done
for seed in ${SEEDS:-0 1 2}; do
  # shellcheck disable=SC2086  # EVAL_ARGS is a list of overrides
  .venv/bin/python -m prewrite.evaluate experiment="$EXPERIMENT" rewriter_path=$OUT/seed$seed \
    seed=$seed dev_examples=128 test_examples=$TEST_EXAMPLES $EVAL_ARGS "hydra.run.dir=$OUT/eval_seed$seed"
done
