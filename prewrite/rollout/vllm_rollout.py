"""Rollouts on an in-process vLLM engine (`rollout=vllm`): the rewriter's weights live twice, in the
policy that trains and in the engine that samples, and `sync` copies the first into the second after
every update.

The engine returns token ids only; prompts are padded, and completions masked and decoded, by the
same code as the hf rollout (`base.to_rollout`), so the update cannot tell which engine sampled.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prewrite import model_zoo, precision
from prewrite.rollout.base import Rollout, RolloutEngine, to_rollout

SEED_MAX = 2**31 - 1


class VLLMRollout(RolloutEngine):
    """A vLLM engine in this process, so `sync` can reach its model. It starts from the folder the
    policy was loaded from (`policy.name_or_path`): sync first if the policy has changed since."""

    def __init__(
        self,
        policy: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        kv_cache_memory_bytes: int | None = None,
        max_model_len: int = 1024,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        sleep_mode: bool = False,
        tensor_parallel_size: int = 1,
        seed: int = 0,
    ):
        # Read by vLLM when the engine is built: the engine core then runs in this process, where the
        # policy's tensors can be handed to it without serialization.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        vllm = model_zoo.import_vllm("rollout")
        if sleep_mode:
            from vllm.platforms import current_platform

            if not current_platform.is_sleep_mode_available():
                raise ValueError(
                    f"rollout.sleep_mode=true needs a platform with vLLM sleep mode (CUDA, ROCm, XPU); this one is "
                    f"{current_platform.device_type!r}: set rollout.sleep_mode=false"
                )
        self.policy, self.tokenizer = policy, tokenizer
        self.sleep_mode = sleep_mode
        self.tensor_parallel_size = tensor_parallel_size
        self._asleep: set[str] = set()  # sleep-mode memory tags ("weights", "kv_cache") now released
        # vLLM seeds Python's, NumPy's and torch's global RNGs at start-up; put them back, so the
        # training's seeded streams do not depend on which rollout engine is configured.
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng():
            self.llm = vllm.LLM(
                model=policy.name_or_path,
                dtype=precision.resolve_dtype(dtype, policy.device.type),  # vLLM's "auto" = the model's dtype
                gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_memory_bytes=kv_cache_memory_bytes,
                max_model_len=max_model_len,
                enforce_eager=enforce_eager,
                enable_prefix_caching=enable_prefix_caching,
                enable_sleep_mode=sleep_mode,
                tensor_parallel_size=tensor_parallel_size,
                seed=seed,
            )
        random.setstate(py_state)
        np.random.set_state(np_state)
        self._tokens_prompt = vllm.inputs.TokensPrompt
        self._sampling_params = vllm.SamplingParams

    def generate(
        self,
        prompt_ids: list[list[int]],
        num_generations: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
    ) -> Rollout:
        """`num_generations` completions per prompt, grouped contiguously, as `hf.generate` returns them."""
        self._wake(["weights", "kv_cache"])
        # One seed per call, drawn from torch's global RNG: a seeded run (and a resumed one, which
        # restores that RNG) samples the same rewrites. vLLM gives the i-th sample of a request seed + i.
        seed = int(torch.randint(SEED_MAX - len(prompt_ids) * num_generations, ())) if do_sample else None
        params = [
            self._sampling_params(
                n=num_generations,
                temperature=temperature if do_sample else 0.0,
                top_p=top_p if do_sample else 1.0,
                max_tokens=max_new_tokens,
                seed=None if seed is None else seed + i * num_generations,
                # the EOS the Rollout masks by, whatever else the model's generation config stops at
                stop_token_ids=[self.tokenizer.eos_token_id],
                detokenize=False,  # texts are decoded by the project's tokenizer, as for hf
            )
            for i in range(len(prompt_ids))
        ]
        prompts = [self._tokens_prompt(prompt_token_ids=ids) for ids in prompt_ids]
        device = next(self.policy.parameters()).device  # where the loss reads the rollout
        # The engine computes in rollout.dtype: a caller's mixed-precision autocast (Lightning's
        # bf16-mixed) must not recast its matmuls.
        with torch.autocast(device.type, enabled=False):
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self._sleep()
        completions = [list(sample.token_ids) for out in outputs for sample in out.outputs]
        # Right-padded to the longest completion, as generate's output is; to_rollout masks the padding.
        completion_ids = torch.full((len(completions), max(map(len, completions))), self.tokenizer.pad_token_id)
        for row, ids in zip(completion_ids, completions, strict=True):
            row[: len(ids)] = torch.tensor(ids)
        batch = self.tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt").to(device)
        return to_rollout(self.tokenizer, batch, completion_ids.to(device), num_generations)

    @torch.no_grad()
    def sync(self, policy: PreTrainedModel) -> None:
        """Load the policy's current weights into the engine, in place, and drop the prefix cache,
        whose keys and values were computed with the old weights."""
        self.policy = policy
        policy = model_zoo.plain_model(policy)  # a LoRA policy: its adapter merged, under the base model's names
        self._wake(["weights"])
        # vLLM ties the output matrix to the embedding itself, so a tied lm_head is left out.
        tied = policy.config.tie_word_embeddings
        weights = ((name, t) for name, t in policy.state_dict().items() if not (tied and name == "lm_head.weight"))
        # In-process (see __init__), so the iterator reaches the worker as it is; names are the
        # checkpoint's, which the model's own load_weights maps onto vLLM's fused layers (and, with
        # tensor parallelism, shards: each worker process then gets the whole list, pickled).
        if self.tensor_parallel_size > 1:
            weights = list(weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def _sleep(self) -> None:
        """Sleep mode (GPU): between rollouts the weights wait in host memory and the KV cache is
        released, so the policy update has the device memory. Level 1 keeps the weights, so a
        generate without a sync before it (the dev evaluation) still has them."""
        if self.sleep_mode:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]) -> None:
        tags = [t for t in tags if t in self._asleep]
        if tags:
            self.llm.wake_up(tags=tags)
            self._asleep -= set(tags)
