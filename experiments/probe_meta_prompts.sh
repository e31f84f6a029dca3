#!/bin/bash
# Issue 18: the untrained rewriter's samples under three meta prompts, scored on sentence-level SST-2
# dev (prewrite.probe; never reads test). Results: experiments/RESULTS.md. Needs `make setup-vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."
P="Rewrite the following instruction via rephrasing and/or adding specific requirements."
T="Output the new instruction only.
Instruction: {instruction}"
declare -A M=(
  [paper]="$P Add instructions which would be helpful to solve the problem correctly. $T"
  [concise]="$P Keep it to one short sentence. $T"
  [format]="$P Say exactly what the answer must look like. $T"
)
for name in paper concise format; do
  .venv/bin/python -m prewrite.probe task=sst2_sentences task_backend=vllm num_samples=16 dev_examples=128 \
    "meta_prompt='${M[$name]}'" "hydra.run.dir=outputs/probes/meta_$name"
done
