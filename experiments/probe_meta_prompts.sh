#!/bin/bash
# Issue 18: the untrained rewriter's samples under several meta prompts, scored greedily on
# sentence-level SST-2 dev (prewrite.probe; never reads test). Results: experiments/RESULTS.md.
#   bash experiments/probe_meta_prompts.sh                       # paper, concise, format on vLLM (make setup-vllm)
#   BACKEND=hf NAMES="paper persona example" ARGS=task_backend.constrained=false bash experiments/probe_meta_prompts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-vllm}
NAMES=${NAMES:-paper concise format}
ARGS=${ARGS:-}  # more overrides (hf scores classification constrained unless task_backend.constrained=false)
P="Rewrite the following instruction via rephrasing and/or adding specific requirements."
H="Add instructions which would be helpful to solve the problem correctly."
T="Output the new instruction only.
Instruction: {instruction}"
# `example` shows one rewrite of an instruction for a task that is none of the project's benchmarks, so
# no task's labels or answers reach the rewriter: a role for the task model and the exact answer words.
declare -A M=(
  [paper]="$P $H $T"
  [concise]="$P Keep it to one short sentence. $T"
  [format]="$P Say exactly what the answer must look like. $T"
  [persona]="$P $H Give the reader a role, such as an expert on the subject, and name the possible answers. $T"
  [example]="$P $H For example, \"Detect the language.\" could become \"You are a linguist. Read the text and answer with the name of its language only, such as English or French.\" $T"
)
for name in $NAMES; do
  .venv/bin/python -m prewrite.probe task=sst2_sentences task_backend=$BACKEND num_samples=16 dev_examples=128 \
    "meta_prompt='${M[$name]}'" "hydra.run.dir=outputs/probes/meta_${name}_$BACKEND" $ARGS
done
