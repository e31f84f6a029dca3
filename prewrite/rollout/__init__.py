"""Rewriter generation: sample rewrites of an instruction from the policy.

The contract is `base.RolloutEngine` (`generate` -> `base.Rollout`, and `sync` after every update);
the engines: `hf_rollout.HFRollout` (the policy itself: `decoding_loop` where it applies, else
transformers generate) and
`vllm_rollout.VLLMRollout` (an in-process vLLM engine holding its own copy of the weights).
"""

from __future__ import annotations

from collections.abc import Mapping

from prewrite.rollout.base import RolloutEngine


def build_rollout(rollout_cfg: Mapping, policy, tokenizer) -> RolloutEngine:
    """The configured engine (`rollout`, a `_target_` mapping) for `policy` and its tokenizer."""
    from hydra.utils import instantiate

    return instantiate(rollout_cfg, policy=policy, tokenizer=tokenizer)
