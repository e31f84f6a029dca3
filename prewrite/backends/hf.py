"""In-process task LLM: a frozen transformers model, greedy, batched with left padding."""

from __future__ import annotations

import torch

from prewrite import models


class HFBackend:
    """Answers user messages with the frozen task LLM.

    Prompts are deduplicated and sorted by length before batching, so a batch holds prompts of
    similar length (little padding waste) and an identical prompt is run once.
    """

    def __init__(
        self,
        model_name_or_path: str,
        dtype: str = "bfloat16",
        batch_size: int = 32,
        max_new_tokens: int = 4,
        device: str = "cpu",
    ):
        self.model_name_or_path = model_name_or_path
        self.tokenizer = models.load_tokenizer(model_name_or_path)
        self.model = models.load_model(model_name_or_path, dtype).to(device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.num_calls = 0  # prompts actually run through the model (after deduplication)

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        return [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False
            )
            for p in prompts
        ]

    @torch.inference_mode()
    def generate(self, prompts: list[str]) -> list[str]:
        unique = list(dict.fromkeys(prompts))
        encoded = self._encode(unique)
        order = sorted(range(len(unique)), key=lambda i: len(encoded[i]))
        answers: dict[str, str] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(self.device)
            out = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            texts = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            answers.update({unique[i]: t for i, t in zip(idx, texts, strict=True)})
        self.num_calls += len(unique)
        return [answers[p] for p in prompts]

    @torch.inference_mode()
    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float | None]:
        """Mean log-probability per token of each continuation as the assistant's reply to its
        prompt (None for an empty continuation). One forward pass per batch, no generation."""
        pairs = list(dict.fromkeys(zip(prompts, continuations, strict=True)))
        contexts = self._encode([p for p, _ in pairs])
        targets = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in pairs]
        order = sorted(range(len(pairs)), key=lambda i: len(contexts[i]) + len(targets[i]))
        result: dict[tuple[str, str], float | None] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            seqs = [contexts[i] + targets[i] for i in idx]
            batch = self.tokenizer.pad({"input_ids": seqs}, return_tensors="pt").to(self.device)
            # Left padding puts every continuation at the end: only the last k positions need logits.
            k = max(len(targets[i]) for i in idx) + 1
            logps = self.model(**batch, logits_to_keep=k).logits[:, :-1].float().log_softmax(-1)
            for row, i in enumerate(idx):
                n = len(targets[i])
                if n == 0:
                    result[pairs[i]] = None
                    continue
                # logps[:, j] predicts the token at position width - k + 1 + j; the target is the last n
                tok = batch["input_ids"][row, -n:]
                result[pairs[i]] = logps[row, -n:].gather(-1, tok.unsqueeze(-1)).mean().item()
        self.num_calls += len(pairs)
        return [result[p] for p in zip(prompts, continuations, strict=True)]
