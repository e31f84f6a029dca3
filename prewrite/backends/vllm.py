"""In-process task LLM on a vLLM engine (`vllm.LLM`): greedy (or constrained to the label verbalizers of a
classification task, as the hf backend), continuous batching, paged KV cache with prefix caching.

Prompts are encoded with the model's chat template by the same function as the hf backend and handed
to vLLM as token ids, and answers are decoded by the same tokenizer, so the two backends see and
return the same tokens: any difference in answers is numerical, not a formatting one.
"""

from __future__ import annotations

import logging
import multiprocessing.util as mp_util
import os
from collections.abc import Sequence
from pathlib import Path

from prewrite import chat, model_zoo, precision
from prewrite.backends.base import TaskBackend
from prewrite.backends.hf import folder_fingerprint
from prewrite.backends.labels import LabelChoosing, choice_prefixes

log = logging.getLogger(__name__)


class VLLMBackend(LabelChoosing, TaskBackend):
    """Answers user messages with a frozen model on an in-process vLLM engine.

    With `constrained=True` and `choices` (passed by `build_backend`), as on the hf backend: the answer is
    the verbalizer with the highest summed log-probability as the start of the reply. One request per
    prompt (and verbalizer prefix) generates one token and returns the log-probabilities of exactly the
    verbalizers' tokens (`logprob_token_ids`); the shared chat header and instruction come from vLLM's
    prefix cache."""

    def __init__(
        self,
        model_name_or_path: str,
        dtype: str = "auto",
        max_new_tokens: int = 4,
        constrained: bool = False,
        choices: list[str] | None = None,
        content_free_inputs: Sequence[str] = (),
        gpu_memory_utilization: float = 0.3,
        max_model_len: int = 1024,
        enforce_eager: bool = True,
        tensor_parallel_size: int = 1,
        multiprocessing: bool = False,
        seed: int = 0,
        chat_template: str | None = None,
        price_per_1m_prompt_tokens: float | None = None,
        price_per_1m_completion_tokens: float | None = None,
    ):
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"task_backend.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        # vLLM reads this when the engine is built: without multiprocessing the engine core runs in this
        # process (no worker processes to spawn, and a training process can reach its weights).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
        vllm = model_zoo.import_vllm("task_backend")
        super().__init__(price_per_1m_prompt_tokens, price_per_1m_completion_tokens)
        self.model_name_or_path = model_name_or_path
        self.resolved = model_zoo.resolve(model_name_or_path)
        self.tokenizer = model_zoo.load_tokenizer(model_name_or_path, chat_template)
        # before the engine starts: a bad verbalizer is refused at once
        self._set_choices(constrained, choices, content_free_inputs)
        self.chat_template = chat_template
        self.dtype = dtype = precision.resolve_dtype(dtype, None)  # vLLM's own "auto" would mean the model's dtype
        self.max_new_tokens = max_new_tokens
        self.llm = vllm.LLM(
            model=self.resolved,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
        )
        # A process that ends through multiprocessing (a pool or launcher worker) joins its child processes
        # before atexit handlers run: too late for vLLM's own to stop the engine-core child of
        # `multiprocessing=true`, and the process would never exit. Finalizers of exitpriority >= 0 run first.
        mp_util.Finalize(self, self.llm.llm_engine.engine_core.shutdown, exitpriority=0)
        self._sampling = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        # One position of the prompt's own log-probabilities per token; generating one token is the
        # least vLLM allows.
        self._scoring = vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        self._tokens_prompt = vllm.inputs.TokensPrompt
        self._sampling_params = vllm.SamplingParams

    def __repr__(self) -> str:
        return f"VLLMBackend({self.model_name_or_path!r}, dtype={self.dtype!r})"

    def cache_identity(self) -> dict:
        """The model (folder fingerprint, or hub id), dtype and generation settings. Its own backend
        name: vLLM's kernels round differently from transformers', so the two may pick different
        greedy tokens and must not serve each other's answers."""
        if Path(self.resolved).is_dir():
            model = {"folder_fingerprint": folder_fingerprint(self.resolved)}
        else:
            log.warning("Response cache: %s is keyed by its hub id alone, without a revision.", self.resolved)
            model = {"hub_id": self.resolved}
        return {
            "backend": "vllm",
            **model,
            "dtype": self.dtype,
            **self.decoding_identity(),
            "max_new_tokens": self.max_new_tokens,
            "prompt_format": chat.prompt_format(self.tokenizer, self.chat_template),
        }

    def _run(self, token_ids: list[list[int]], params) -> list:
        return self.llm.generate(
            [self._tokens_prompt(prompt_token_ids=ids) for ids in token_ids], params, use_tqdm=False
        )

    def generate(self, prompts: list[str]) -> list[str]:
        if self.constrained:
            return self._choose(prompts)
        unique = list(dict.fromkeys(prompts))
        if not unique:
            return []
        encoded = chat.encode_all(self.tokenizer, unique)
        outputs = self._run(encoded, self._sampling)
        generated = [list(o.outputs[0].token_ids) for o in outputs]
        # Decoded by the project's tokenizer exactly as the hf backend decodes, not by vLLM's detokenizer.
        answers = dict(zip(unique, self.tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True))
        self.usage.add(
            calls=len(unique),
            prompt_tokens=sum(len(e) for e in encoded),
            completion_tokens=sum(len(g) for g in generated),
        )
        return [answers[p] for p in prompts]

    def label_scores(self, prompts: list[str]) -> list[list[float]]:
        """Each verbalizer's summed log-probability after each prompt: one request per prompt
        and verbalizer prefix (labels.choice_prefixes), whose prefix tokens are scored as prompt positions
        and whose next token's log-probabilities are read for the verbalizers' last tokens."""
        unique = list(dict.fromkeys(prompts))
        encoded = chat.encode_all(self.tokenizer, unique)
        prefixes = choice_prefixes(self._choice_ids)
        params = {
            prefix: self._sampling_params(
                temperature=0.0,
                max_tokens=1,
                logprob_token_ids=[ids[-1] for ids in self._choice_ids if tuple(ids[:-1]) == prefix],
                # prompt log-probabilities bypass the prefix cache: asked for only where a prefix needs them
                prompt_logprobs=0 if prefix else None,
            )
            for prefix in prefixes
        }
        rows = [(u, prefix) for u in range(len(unique)) for prefix in prefixes]
        outputs = self._run([encoded[u] + list(prefix) for u, prefix in rows], [params[p] for _, p in rows])
        logps = {}  # (prompt, prefix) -> {last token: the prefix's and its summed log-probability}
        for (u, prefix), out in zip(rows, outputs, strict=True):
            head = out.prompt_logprobs[-len(prefix) :] if prefix else []
            start = sum(pos[tok].logprob for pos, tok in zip(head, prefix, strict=True))
            logps[(u, prefix)] = {tok: start + lp.logprob for tok, lp in out.outputs[0].logprobs[0].items()}
        scores = {
            prompt: [logps[(u, tuple(ids[:-1]))][ids[-1]] for ids in self._choice_ids]
            for u, prompt in enumerate(unique)
        }
        self.usage.add(calls=len(unique), prompt_tokens=sum(len(e) for e in encoded))
        return [scores[p] for p in prompts]

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float | None]:
        """Mean log-probability per token of each continuation as the assistant's reply to its prompt
        (None for an empty continuation), from vLLM's prompt log-probabilities: the continuation is
        appended to the prompt and the log-probabilities of its own positions are read back."""
        pairs = list(dict.fromkeys(zip(prompts, continuations, strict=True)))
        contexts = chat.encode_all(self.tokenizer, [p for p, _ in pairs])
        targets = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in pairs]
        outputs = self._run([c + t for c, t in zip(contexts, targets, strict=True)], self._scoring)
        result: dict[tuple[str, str], float | None] = {}
        for pair, target, out in zip(pairs, targets, outputs, strict=True):
            if not target:
                result[pair] = None
                continue
            # prompt_logprobs[i] maps token ids to the log-probability at position i (None at position 0);
            # with prompt_logprobs=0 it holds the prompt's own token.
            positions = out.prompt_logprobs[-len(target) :]
            result[pair] = sum(pos[tok].logprob for pos, tok in zip(positions, target, strict=True)) / len(target)
        self.usage.add(
            calls=len(pairs), prompt_tokens=sum(len(c) + len(t) for c, t in zip(contexts, targets, strict=True))
        )
        return [result[p] for p in zip(prompts, continuations, strict=True)]
