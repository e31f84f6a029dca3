"""The hf backend computes a prompt prefix shared by several rows (chat header + instruction) once:
every row's answer, label choice and log-likelihood must equal what that prompt computes alone."""

import pytest
import torch
from omegaconf import OmegaConf

from prewrite.backends.hf import (
    FORWARD_POSITIONS,
    HFBackend,
    length_cuts,
    own_prefix_width,
    plan_batches,
    prefix_groups,
)
from prewrite.tasks import load_task
from tests.conftest import CONF

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "embedded:smollm2-135m-instruct"
INSTRUCTIONS = [
    "Classify the sentiment.",
    "Classify the sentiment of the sentence as positive or negative.",  # shares words with the first
    "You are a movie critic. Say whether the review below is positive or negative.",
]


def test_prefix_groups_split_where_rows_diverge():
    header = [1, 2, 3]
    a, b = header + [10, 11, 12], header + [20, 21]
    seqs = [a + [7], b + [8, 9], a + [5, 6], b + [4], a + [5]]
    shared, groups = prefix_groups(seqs)
    assert shared == len(header)
    assert dict((tuple(sorted(m)), p) for p, m in groups) == {(0, 2, 4): len(a), (1, 3): len(b)}
    # each member keeps `keep` tokens of its own: the shared prefix shrinks to fit the shortest
    shared, groups = prefix_groups(seqs, keep=2)
    assert dict((tuple(sorted(m)), p) for p, m in groups) == {(0, 2, 4): 5, (1, 3): 4}
    # two rewrites that start with the same word keep their own prefixes (not one cut after that word)
    c, d, e = header + [10, 30, 31, 32], header + [10, 40, 41, 42], header + [50, 51]
    shared, groups = prefix_groups([c + [5], d + [5], e + [5], c + [6], d + [6], e + [6], c + [7], d + [7]])
    assert shared == len(header)
    assert sorted(groups) == [(len(e), [2, 5]), (len(c), [0, 3, 6]), (len(d), [1, 4, 7])]
    assert prefix_groups([[1, 2], [3, 4]]) == (0, [(0, [0, 1])])  # nothing shared: plain batches
    assert prefix_groups([[1, 2], [1, 2, 3]], keep=2) == (0, [(0, [0, 1])])  # [1, 2] keeps both its tokens


def test_own_prefix_width_runs_a_group_prefix_only_where_it_saves():
    # (own prefix length, rows): rewrites of 30-40 tokens with 8 examples each share all of it
    assert own_prefix_width([(30, 8), (40, 8), (35, 8)]) == 40
    # one instruction: rows share at most a first word, and a padded group row per word costs as much
    assert own_prefix_width([(1, 2), (0, 1), (0, 1), (2, 1), (1, 1)]) == 0
    # one long own prefix among short ones is cut to where the padding of the others stops paying
    assert own_prefix_width([(30, 4), (30, 4), (2, 1), (0, 1), (0, 1), (0, 1)]) == 30
    assert own_prefix_width([(30, 2), (1, 3), (1, 3), (0, 1), (0, 1), (0, 1)]) == 1


def test_length_cuts_pad_less_than_fixed_chunks():
    # cutting every 4 rows pads three short rows to a long one (40 + 20 positions); the cuts keep them apart
    assert length_cuts([1, 1, 1, 10, 10, 10], max_rows=4, per_batch=0) == ([(0, 3), (3, 6)], 33)
    # at a batch's cost above any padding, the fewest batches, then the least padding among them
    assert length_cuts([1, 1, 1, 10, 10, 10], max_rows=4, per_batch=1000) == ([(0, 3), (3, 6)], 2033)
    # a batch per row where batches are free; one batch where a batch costs more than its padding
    assert length_cuts([1, 2, 3, 4], max_rows=4, per_batch=0) == ([(0, 1), (1, 2), (2, 3), (3, 4)], 10)
    assert length_cuts([1, 2, 3, 4], max_rows=4, per_batch=10) == ([(0, 4)], 26)
    assert length_cuts([], max_rows=4, per_batch=10) == ([], 0)


def rows_in(chunks) -> list[int]:
    return sorted(i for chunk in chunks for batch in chunk.batches for _, i in batch)


def test_plan_batches_keeps_own_prefixes_only_where_they_pay_for_their_padding():
    header = [1, 2, 3]
    # rewrites of 30 tokens, 8 rows each: each rewrite runs once, its rows' suffixes after it
    rewrites = [header + [100 + r] * 30 for r in range(3)]
    seqs = [w + [7] * (1 + e) for w in rewrites for e in range(8)]
    shared, chunks = plan_batches(seqs, keep=1, batch_size=8, per_batch=4)
    assert shared == len(header) and [len(o) for o in chunks[0].own] == [30, 30, 30]
    assert rows_in(chunks) == list(range(len(seqs)))
    # one instruction's rows, pairs of which share a first word: grouped by it, each group's rows would be
    # sorted by length apart from the others' and padded to them; one length-sorted set pads less
    seqs = [header + [10 + i // 2] + [100 + i] * (1 + (i * 7) % 16) for i in range(16)]
    assert own_prefix_width([(1, 2)] * 8) == 1  # the word alone would be worth a group prefix
    shared, chunks = plan_batches(seqs, keep=1, batch_size=4, per_batch=4)
    assert len(chunks) == 1 and chunks[0].own == [[]]
    assert rows_in(chunks) == list(range(len(seqs)))
    lengths = [[len(seqs[i]) for _, i in batch] for batch in chunks[0].batches]
    assert all(len(b) <= 4 for b in lengths) and lengths == sorted(lengths)  # sorted across batches
    assert plan_batches([], keep=1, batch_size=4, per_batch=4) == (0, [])


@pytest.fixture(scope="module")
def task():
    return load_task(OmegaConf.to_container(OmegaConf.load(CONF / "task" / "sst2.yaml")))


@pytest.fixture(scope="module")
def prompts(task):
    rows = task.eval_rows("test", 6, 0)
    return [task.prompt(i, r) for i in INSTRUCTIONS for r in rows]


@pytest.fixture(scope="module")
def backend():
    # fp32: batched and single-prompt passes are compared exactly
    return HFBackend(MODEL, dtype="float32", batch_size=8, max_new_tokens=12)


def alone(backend, prompt: str) -> torch.Tensor:
    """The prompt's ids alone: no padding, no cache, nothing shared."""
    return torch.tensor([backend._encode([prompt])[0]])


def count_tokens_run(model) -> tuple[list[int], object]:
    """Input positions the model runs in each forward call (cached positions are not run), and the hook's
    handle. A hook, not a wrapped forward: generate reads forward's signature to pass position ids."""
    seen = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(int(kwargs["input_ids"].numel())), with_kwargs=True
    )
    return seen, handle


@torch.inference_mode()
def test_generation_equals_each_prompt_alone_and_runs_each_prefix_once(backend, prompts):
    expected = []
    for p in prompts:
        ids = alone(backend, p)
        out = backend.model.generate(input_ids=ids, do_sample=False, max_new_tokens=12, pad_token_id=2)
        expected.append(backend.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    seen, hook = count_tokens_run(backend.model)
    try:
        assert backend.generate(prompts) == expected
    finally:
        hook.remove()
    prompt_tokens = sum(len(backend._encode([p])[0]) for p in prompts)
    prefill = sum(n for n in seen if n > 8)  # decode steps run one token per row
    # padding included, fewer positions ran than the prompts hold: header + instruction ran once per instruction
    assert prefill < 0.85 * prompt_tokens
    # decoding stops once every row has ended: the rows with short answers, in one batch, take as many
    # forwards as their longest answer's tokens and its end (after the shared and own prefixes' runs)
    short = [(p, e) for p, e in zip(prompts, expected, strict=True) if len(backend.tokenizer(e)["input_ids"]) < 9][:8]
    longest = max(len(backend.tokenizer(e)["input_ids"]) for _, e in short) + 1
    assert 1 < len(short) <= 8 and longest < 12
    seen, hook = count_tokens_run(backend.model)
    try:
        assert backend.generate([p for p, _ in short]) == [e for _, e in short]
    finally:
        hook.remove()
    assert len(seen) <= 2 + longest, seen


@torch.inference_mode()
def test_loglikelihood_equals_each_prompt_alone(backend, prompts, task):
    golds = ["positive", "negative"] * (len(prompts) // 2)
    got = backend.loglikelihood(prompts, golds)
    for p, g, value in zip(prompts, golds, got, strict=True):
        target = backend.tokenizer(g, add_special_tokens=False)["input_ids"]
        ids = torch.cat([alone(backend, p), torch.tensor([target])], 1)
        logps = backend.model(input_ids=ids).logits[0, -len(target) - 1 : -1].log_softmax(-1)
        assert value == pytest.approx(logps.gather(-1, torch.tensor(target)[:, None]).mean().item(), abs=1e-4)


def chosen_alone(backend, prompts: list[str], choices: list[str]) -> list[str]:
    first = [backend.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in choices]
    return [
        choices[int(torch.argmax(backend.model(input_ids=alone(backend, p)).logits[0, -1, first]))] for p in prompts
    ]


@torch.inference_mode()
def test_constrained_choice_equals_each_prompt_alone(prompts):
    choices = ["negative", "positive"]
    constrained = HFBackend(MODEL, dtype="float32", batch_size=8, constrained=True, choices=choices)
    assert constrained.generate(prompts) == chosen_alone(constrained, prompts, choices)
    assert constrained.generate([]) == [] and constrained.label_scores([]) == []


def test_nothing_to_score_gives_empty_answers(backend):
    before = backend.usage.snapshot()
    assert backend.generate([]) == []
    assert backend.loglikelihood([], []) == []
    assert backend.usage.snapshot() == before  # no call, no token counted


@torch.inference_mode()
def test_one_instructions_rows_run_header_and_instruction_once(task):
    """One instruction's rows (an evaluation of it) share header and instruction; rows that also share a
    first word must not run header and instruction again for each such group."""
    choices = ["negative", "positive"]
    prompts = [task.prompt(task.instruction, r) for r in task.eval_rows("test", 24, 0)]
    constrained = HFBackend(MODEL, dtype="float32", batch_size=8, constrained=True, choices=choices)
    encoded = constrained._encode(prompts)
    shared, groups = prefix_groups(encoded)
    instruction = constrained.tokenizer(task.instruction, add_special_tokens=False)["input_ids"]
    assert shared > len(instruction) and len(groups) > 1  # rows sharing a first word make groups of their own
    expected = chosen_alone(constrained, prompts, choices)
    seen, hook = count_tokens_run(constrained.model)
    try:
        assert constrained.generate(prompts) == expected
    finally:
        hook.remove()
    own = sum(len(e) - shared for e in encoded)
    # the shared prefix ran once, then exactly the planned batches: no group prefix (a first word does not pay
    # for its padding), the rows' own tokens length-sorted in batches of at most 8 rows, cut where lengths jump:
    # 14% padding on these rows (cutting every 8 rows: 25%)
    _, chunks = plan_batches(encoded, keep=1, batch_size=8, per_batch=FORWARD_POSITIONS)
    assert [chunk.own for chunk in chunks] == [[[]]]
    planned = [len(b) * max(len(encoded[i]) - shared for _, i in b) for b in chunks[0].batches]
    assert all(len(b) <= 8 for b in chunks[0].batches)
    assert seen == [shared, *planned] and sum(planned) < 1.2 * own, (shared, own, seen, planned)
