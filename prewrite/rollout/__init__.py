"""Rewriter generation: sample rewrites of an instruction from the policy.

A rollout engine has `generate(prompt_ids, num_generations, max_new_tokens, temperature, top_p,
do_sample) -> hf.Rollout` and `sync(policy)`, called after every update so that the next rollout
samples from the new weights: `hf.HFRollout` (transformers generate on the policy itself) and
`vllm.VLLMRollout` (an in-process vLLM engine holding its own copy of the weights).
"""

from __future__ import annotations

from collections.abc import Mapping


def build_rollout(rollout_cfg: Mapping, policy, tokenizer):
    """The configured engine (`rollout`, a `_target_` mapping) for `policy` and its tokenizer."""
    from hydra.utils import instantiate

    return instantiate(rollout_cfg, policy=policy, tokenizer=tokenizer)
