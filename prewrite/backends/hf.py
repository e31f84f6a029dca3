"""In-process task LLM: a frozen transformers model, greedy (or constrained to the label verbalizers of a
classification task), batched with left padding."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from prewrite import chat, model_zoo, precision, prefix_cache
from prewrite.backends.base import TaskBackend
from prewrite.backends.labels import LabelChoosing, choice_prefixes

log = logging.getLogger(__name__)


def folder_fingerprint(folder: str | Path) -> str:
    """A model folder's identity for the response cache: the content of config.json plus the name,
    size and mtime of every other top-level file (weights, tokenizer, chat template). Hashing the
    weights themselves would cost seconds per run; size+mtime changes whenever they are rewritten."""
    folder = Path(folder)
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name != "config.json":
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # up to the shorter one
        if x != y:
            break
        n += 1
    return n


@dataclass
class SharedPrefixBatch:
    """Rows laid out as [prefix | left-padded suffix], a prefix being [shared by all | left-padded own]: the
    prefixes' keys and values are computed once per group of rows that share them (`cache`, covering the
    first `prefix_width` columns); only the suffixes go through the model again. Positions count real
    tokens only, as in a plain left-padded batch, so a row computes what it would alone."""

    idx: list[int]  # the rows' indices in the sequences given
    input_ids: torch.Tensor  # [B, prefix_width + suffix_width]
    attention_mask: torch.Tensor  # the same shape; 0 at padding, which may sit between prefix and suffix
    cache: DynamicCache | None  # the prefixes' keys and values ([B, heads, prefix_width, dim] per layer)
    prefix_width: int

    def suffix_inputs(self) -> dict:
        """Inputs for a plain forward over the suffixes (a generate call takes input_ids and the mask whole)."""
        positions = prefix_cache.left_padded_positions(self.attention_mask)[:, self.prefix_width :]
        return dict(
            input_ids=self.input_ids[:, self.prefix_width :],
            attention_mask=self.attention_mask,
            position_ids=positions,
            past_key_values=self.cache,
        )


def prefix_groups(seqs: list[list[int]], keep: int = 1) -> tuple[int, list[tuple[int, list[int]]]]:
    """The length of the prefix every sequence shares (e.g. the chat header, or header and instruction
    when all rows have one instruction) and (prefix length, member indices) groups of sequences that share
    more, e.g. one rewrite's examples. Sequences are sorted lexicographically (so those sharing a prefix
    are adjacent); a row joins the group before it unless that would cut the group's prefix by more than
    a prefix row of its own costs (two rewrites that start with the same word stay two groups). A group's
    prefix is its members' common prefix; a row alone gets only the shared one. Every prefix leaves each
    of its sequences `keep` tokens of its own. A prefix length of 0 everywhere means nothing is shared."""
    order = sorted(range(len(seqs)), key=seqs.__getitem__)
    room = [len(s) - keep for s in seqs]  # the longest prefix each row can give up
    common = max(0, min(common_prefix_length(seqs[order[0]], seqs[order[-1]]), min(room)))
    groups: list[tuple[int, list[int]]] = []
    for prev, i in zip([None, *order[:-1]], order, strict=True):
        if prev is not None:
            prefix, members = groups[-1]
            shared = min(common_prefix_length(seqs[prev], seqs[i]), room[i])
            # joining costs each member (prefix - shared) more suffix tokens; leaving, about one prefix row
            if len(members) * (prefix - shared) < prefix - common:
                groups[-1] = (min(prefix, shared), [*members, i])
                continue
        groups.append((room[i], [i]))
    out = [(p if len(members) > 1 else common, members) for p, members in groups]
    if any(p == 0 for p, _ in out):  # an empty prefix would be a row of padding only (never when common > 0)
        return 0, [(0, [i for _, members in out for i in members])]
    return common, out


def own_prefix_width(groups: list[tuple[int, int]]) -> int:
    """How many of each group's own prefix tokens (those after the prefix all rows share) to run once for
    the group, from (own prefix length, rows) per group: at width w a group of m rows saves m * min(e, w)
    positions of its rows' suffixes and costs w (its left-padded prefix row). The best w, the smallest if
    several tie; 0 when sharing saves nothing (one instruction, rows that share a first word at most)."""
    widths = sorted({0} | {e for e, _ in groups})
    return max(widths, key=lambda w: sum(m * min(e, w) - w for e, m in groups))


# What a batch costs beyond its rows' positions, in positions (padding included) of a forward: a forward's
# fixed work, and smaller products run slower. A batch that decodes also reads every weight once per new
# token: on the AVX2 EPYC of experiments/RESULTS.md (issue 17), batched greedy generation of 256 rows took
# 16 s longer than scoring them, about 0.28 s per decoding step of a batch of 32, where a forward runs a
# position in 1.9 ms: 150 positions a step, 32 of them the rows' own.
FORWARD_POSITIONS = 64
DECODE_STEP_POSITIONS = 120


def length_cuts(lengths: Sequence[int], max_rows: int, per_batch: int) -> tuple[list[tuple[int, int]], int]:
    """Consecutive batches (start, end) of rows sorted by length, at most `max_rows` each, that run the
    fewest positions: a batch pads each row to its longest, so cutting every `max_rows` rows pads a whole
    batch to the one long row it straddles; `per_batch` positions are added per batch. Dynamic programming
    over the cut points. Returns the cuts and their cost."""
    best, cut = [0] + [None] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + (end - start) * lengths[end - 1] + per_batch
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    cuts, end = [], len(lengths)
    while end:
        cuts.append((cut[end], end))
        end = cut[end]
    return cuts[::-1], best[-1]


@dataclass
class BatchChunk:
    """Up to `batch_size` groups: their own prefixes (run once per group, after the shared one) and their
    rows' batches, each a list of (group in this chunk, row index)."""

    own: list[list[int]]
    batches: list[list[tuple[int, int]]]

    @property
    def width(self) -> int:
        """The longest own prefix: every group's is left-padded to it (0: no own prefixes)."""
        return max(map(len, self.own))


def plan_batches(seqs: list[list[int]], keep: int, batch_size: int, per_batch: int) -> tuple[int, list[BatchChunk]]:
    """The shared prefix's length and the chunks that run the fewest positions, the shared prefix aside
    (`per_batch`: what a batch of suffixes costs beyond its positions, length_cuts):
    each group's own prefix up to own_prefix_width tokens, or none (one group), whichever costs less once
    the padding of each is counted (own prefixes cut the rows into chunks sorted by length apart: one
    instruction's rows grouped by their first word pad more than that word saves); each chunk's rows sorted
    by suffix length and cut by length_cuts."""
    if not seqs:
        return 0, []
    shared, groups = prefix_groups(seqs, keep)
    plans = []
    for limit in {0, own_prefix_width([(p - shared, len(m)) for p, m in groups])}:
        parts = groups if limit else [(shared, [i for _, members in groups for i in members])]
        chunks, cost = [], 0
        for start in range(0, len(parts), batch_size):
            chunk_parts = parts[start : start + batch_size]
            own = [seqs[m[0]][shared : min(p, shared + limit)] for p, m in chunk_parts]
            rows = [(g, i) for g, (_, members) in enumerate(chunk_parts) for i in members]
            lengths = [len(seqs[i]) - shared - len(own[g]) for g, i in rows]
            order = sorted(range(len(rows)), key=lengths.__getitem__)
            cuts, suffix_cost = length_cuts([lengths[r] for r in order], batch_size, per_batch)
            chunk = BatchChunk(own, [[rows[r] for r in order[a:b]] for a, b in cuts])
            own_cost = len(own) * chunk.width + FORWARD_POSITIONS if chunk.width else 0  # a forward, no decoding
            cost += suffix_cost + own_cost
            chunks.append(chunk)
        plans.append((cost, limit, chunks))
    return shared, min(plans, key=lambda plan: plan[:2])[2]


class HFBackend(LabelChoosing, TaskBackend):
    """Answers user messages with the frozen task LLM.

    Prompts are deduplicated and sorted by length before batching, so a batch holds prompts of
    similar length (little padding waste) and an identical prompt is run once.

    With `constrained=True` and `choices` (a classification task's label verbalizers, passed by
    `build_backend`), nothing is generated: each verbalizer is scored by its summed log-probability as
    the start of the reply, and the best one is the answer text, which `Task.parse` reads like any
    generated answer. One forward pass per batch replaces `max_new_tokens` decoding steps.
    """

    def __init__(
        self,
        model_name_or_path: str,
        dtype: str = "auto",
        batch_size: int = 32,
        max_new_tokens: int = 4,
        device: str = "cpu",
        constrained: bool = False,
        choices: list[str] | None = None,
        content_free_inputs: Sequence[str] = (),
        chat_template: str | None = None,
        price_per_1m_prompt_tokens: float | None = None,
        price_per_1m_completion_tokens: float | None = None,
    ):
        super().__init__(price_per_1m_prompt_tokens, price_per_1m_completion_tokens)
        self.model_name_or_path = model_name_or_path
        dtype = precision.resolve_dtype(dtype, device)
        self.tokenizer = model_zoo.load_tokenizer(model_name_or_path, chat_template)
        # before the model loads: a bad verbalizer is refused at once
        self._set_choices(constrained, choices, content_free_inputs)
        self.chat_template = chat_template
        self.model = model_zoo.load_model(model_name_or_path, dtype).to(device).eval().requires_grad_(False)
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = device

    def cache_identity(self) -> dict:
        """Everything that decides an answer, for the response cache's key: the model (a fingerprint of
        its folder, or a hub id with the commit it was loaded at), the dtype (bf16 and fp32 can pick
        different greedy tokens) and the generation settings. batch_size and device are left out on
        purpose: they only move floating-point rounding, and keying on them would stop answers cached
        by a GPU job from serving a CPU job."""
        resolved = model_zoo.resolve(self.model_name_or_path)
        if Path(resolved).is_dir():
            model = {"folder_fingerprint": folder_fingerprint(resolved)}
        else:
            revision = getattr(self.model.config, "_commit_hash", None)
            if revision is None:
                log.warning(
                    "Response cache: no commit hash known for %s; cached answers are keyed by the hub id "
                    "alone and survive an upstream update of the model.",
                    resolved,
                )
            model = {"hub_id": resolved, "revision": revision}
        return {
            "backend": "hf",
            **model,
            "dtype": self.dtype,
            **self.decoding_identity(),
            "max_new_tokens": self.max_new_tokens,
            "prompt_format": chat.prompt_format(self.tokenizer, self.chat_template),
        }

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        return chat.encode_all(self.tokenizer, prompts)

    def _batches(
        self, seqs: list[list[int]], keep: int = 1, per_batch: int = FORWARD_POSITIONS
    ) -> Iterator[SharedPrefixBatch]:
        """The rows as `plan_batches` lays them out, [shared | own | suffix]: the prefix every row shares runs
        through the model once, each group's own prefix once per group, then the rows' suffixes."""
        shared, chunks = plan_batches(seqs, keep, self.batch_size, per_batch)
        if not chunks:  # nothing to score (as the vllm and openai backends answer an empty list)
            return
        pad = self.tokenizer.pad_token_id
        head = seqs[0][:shared]
        head_layers = None
        if shared:
            ids = torch.tensor([head], device=self.device)
            _, head_layers = prefix_cache.run_prefixes(self.model, ids, torch.ones_like(ids))
        for chunk in chunks:
            own, width = chunk.own, chunk.width
            # long: with nothing shared these are [groups, 0], which torch.tensor would make float
            prefix_ids = torch.tensor([head + [pad] * (width - len(o)) + o for o in own], dtype=torch.long)
            prefix_mask = torch.tensor(
                [[1] * shared + [0] * (width - len(o)) + [1] * len(o) for o in own], dtype=torch.long
            )
            layers, which = head_layers, torch.zeros(len(own), dtype=torch.long)  # group -> its row of layers
            if width:
                on_device = prefix_mask.to(self.device)
                positions = prefix_cache.left_padded_positions(on_device)[:, shared:]
                cache = None
                if head_layers is not None:
                    cache = prefix_cache.cache_for_rows(head_layers, which.to(self.device), self.model.config)
                own_ids = prefix_ids[:, shared:].to(self.device)
                _, layers = prefix_cache.run_prefixes(self.model, own_ids, on_device, positions, cache)
                which = torch.arange(len(own))
            for part in chunk.batches:
                suffixes = [seqs[i][shared + len(own[g]) :] for g, i in part]
                s_width = max(map(len, suffixes))
                g_idx = torch.tensor([g for g, _ in part])
                ids = [[pad] * (s_width - len(x)) + x for x in suffixes]
                mask = [[0] * (s_width - len(x)) + [1] * len(x) for x in suffixes]
                cache = None
                if layers is not None:
                    cache = prefix_cache.cache_for_rows(layers, which[g_idx].to(self.device), self.model.config)
                yield SharedPrefixBatch(
                    idx=[i for _, i in part],
                    input_ids=torch.cat([prefix_ids[g_idx], torch.tensor(ids)], 1).to(self.device),
                    attention_mask=torch.cat([prefix_mask[g_idx], torch.tensor(mask)], 1).to(self.device),
                    cache=cache,
                    prefix_width=shared + width,
                )

    @torch.inference_mode()
    def generate(self, prompts: list[str]) -> list[str]:
        if self.constrained:
            return self._choose(prompts)
        unique = list(dict.fromkeys(prompts))
        encoded = self._encode(unique)
        answers: dict[str, str] = {}
        last = prefix_cache.keep_last(1, self.device)
        per_batch = FORWARD_POSITIONS + DECODE_STEP_POSITIONS * self.max_new_tokens
        for batch in self._batches(encoded, per_batch=per_batch):
            # generate runs only the columns the cache does not cover, and stops once every row has ended
            out = self.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                past_key_values=batch.cache,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                logits_to_keep=last,
            )
            generated = out[:, batch.input_ids.shape[1] :]
            texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            answers.update({unique[i]: t for i, t in zip(batch.idx, texts, strict=True)})
            self.usage.add(completion_tokens=self._count_generated(generated))
        self.usage.add(calls=len(unique), prompt_tokens=sum(len(e) for e in encoded))
        return [answers[p] for p in prompts]

    @torch.inference_mode()
    def label_scores(self, prompts: list[str]) -> list[list[float]]:
        """Each verbalizer's summed log-probability after each prompt: one row per prompt and verbalizer
        prefix (labels.choice_prefixes), every row through one forward pass per batch; only the last k
        positions get logits."""
        unique = list(dict.fromkeys(prompts))
        encoded = self._encode(unique)
        prefixes = choice_prefixes(self._choice_ids)
        rows = [(u, prefix) for u in range(len(unique)) for prefix in prefixes]
        k = max(len(p) for p in prefixes) + 1
        logps: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}  # (prompt, prefix) -> [k, vocab]
        keep = prefix_cache.keep_last(k, self.device)
        for batch in self._batches([encoded[u] + list(prefix) for u, prefix in rows], keep=k):
            out = self.model(**batch.suffix_inputs(), logits_to_keep=keep).logits.float().log_softmax(-1)
            logps.update({rows[r]: out[row] for row, r in enumerate(batch.idx)})
        scores = {}
        for u, prompt in enumerate(unique):
            scores[prompt] = [
                # Left padding puts the row's end last: position -n + j predicts the verbalizer's token j.
                sum(logps[(u, tuple(ids[:-1]))][-len(ids) + j, tok].item() for j, tok in enumerate(ids))
                for ids in self._choice_ids
            ]
        self.usage.add(calls=len(unique), prompt_tokens=sum(len(e) for e in encoded))
        return [scores[p] for p in prompts]

    def _count_generated(self, generated: torch.Tensor) -> int:
        """Generated tokens up to and including each row's first stop token; what follows is padding."""
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if not eos:
            return int((generated != self.tokenizer.pad_token_id).sum())
        is_eos = torch.isin(generated, torch.tensor(eos, device=generated.device))
        after_first_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
        return int((~after_first_eos).sum())

    @torch.inference_mode()
    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[float | None]:
        """Mean log-probability per token of each continuation as the assistant's reply to its
        prompt (None for an empty continuation). One forward pass per batch, no generation."""
        pairs = list(dict.fromkeys(zip(prompts, continuations, strict=True)))
        contexts = self._encode([p for p, _ in pairs])
        targets = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in pairs]
        result: dict[tuple[str, str], float | None] = {}
        # the suffix of each row must hold its whole continuation and the token before it
        k = max((len(t) for t in targets), default=0) + 1
        seqs = [c + t for c, t in zip(contexts, targets, strict=True)]
        keep = prefix_cache.keep_last(k, self.device)
        for batch in self._batches(seqs, keep=k):
            # Left padding puts every continuation at the end: only the last k positions need logits.
            logps = self.model(**batch.suffix_inputs(), logits_to_keep=keep).logits[:, :-1].float().log_softmax(-1)
            for row, i in enumerate(batch.idx):
                n = len(targets[i])
                if n == 0:
                    result[pairs[i]] = None
                    continue
                # logps[:, j] predicts the token at position width - k + 1 + j; the target is the last n
                tok = batch.input_ids[row, -n:]
                result[pairs[i]] = logps[row, -n:].gather(-1, tok.unsqueeze(-1)).mean().item()
        # A scoring pass reads every token and generates none.
        read = sum(len(c) + len(t) for c, t in zip(contexts, targets, strict=True))
        self.usage.add(calls=len(pairs), prompt_tokens=read)
        return [result[p] for p in zip(prompts, continuations, strict=True)]
