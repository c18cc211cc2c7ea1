"""The scorer (`icr.engines.scoring.scorer.score_groups`) against the plain full-softmax computation."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from icr.core.chat import prompt_ids, tokenize_exchange
from icr.engines.scoring import head as scoring_head
from icr.engines.scoring import scorer as scoring
from icr.engines.scoring.scorer import (
    ScoreGroup,
    _logit_transform,
    _sub_batches,
    reference_logprobs,
    score_groups,
    token_logprobs_from_hidden,
)

TOL = 1e-4
LENGTHS = [1, 2, 5, 9, 17, 4]


@pytest.fixture(scope="module")
def group(tokenizer):
    """One prompt, completions of different lengths (random tokens + one real exchange)."""
    rng = np.random.default_rng(0)
    prompt = prompt_ids(tokenizer, "Tell me something about the sea.")
    completions = [rng.integers(0, len(tokenizer), size=n).tolist() for n in LENGTHS]
    _, real = tokenize_exchange(tokenizer, "Tell me something about the sea.", "The sea is salty and deep.")
    completions.append(real)
    return prompt, completions


@pytest.fixture(scope="module")
def expected(tiny_lm, group):
    prompt, completions = group
    return [reference_logprobs(tiny_lm.model, prompt, c) for c in completions]


def score_one(model, group: ScoreGroup, **options):
    """The scorer on one group (prompt and its completions)."""
    return score_groups(model, [group], **options)[0]


def _assert_close(got: list[list[float]], want: list[list[float]], tol: float = TOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g) == len(w)
        np.testing.assert_allclose(g, w, atol=tol, rtol=0)


@pytest.mark.parametrize("budget", [1, 10, 20, 40, 10**6])
def test_per_token_logprobs_match_full_softmax(tiny_lm, group, expected, budget):
    prompt, completions = group
    got = score_one(tiny_lm.model, ScoreGroup(prompt, completions), token_budget=budget, per_token=True)
    _assert_close(got, expected)
    sums = score_one(tiny_lm.model, ScoreGroup(prompt, completions), token_budget=budget)
    np.testing.assert_allclose(sums, [sum(e) for e in expected], atol=TOL * 20, rtol=0)


def test_small_budget_really_splits_into_sub_batches(group):
    _, completions = group
    lengths = [len(c) for c in completions]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for budget in (1, 10, 20, 40, 10**6):
        batches = _sub_batches(order, lengths, budget)
        assert [i for b in batches for i in b] == order  # every row once, in order
        for b in batches:
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    assert len(_sub_batches(order, lengths, 1)) == len(order)
    assert len(_sub_batches(order, lengths, 20)) > 1
    assert len(_sub_batches(order, lengths, 10**6)) == 1


def test_first_response_token_is_scored_from_last_prompt_position(tiny_lm, group):
    """Off-by-one trap: token 0 of the completion is predicted by the logits at the last prompt token."""
    prompt, completions = group
    with torch.no_grad():
        logits = tiny_lm.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    by_hand = torch.log_softmax(logits, dim=-1)
    got = score_one(tiny_lm.model, ScoreGroup(prompt, completions), per_token=True)
    for comp, per_token in zip(completions, got):
        assert abs(per_token[0] - float(by_hand[comp[0]])) < TOL
    # a one-token completion is exactly that one number
    single = score_one(tiny_lm.model, ScoreGroup(prompt, [[completions[0][0]]]))
    assert abs(single[0] - float(by_hand[completions[0][0]])) < TOL


def test_score_from_offsets(tiny_lm, group, expected):
    prompt, completions = group
    starts = [min(k % 3, len(c)) for k, c in enumerate(completions)]
    assert any(starts)
    got = score_one(tiny_lm.model, ScoreGroup(prompt, completions, starts), token_budget=20, per_token=True)
    _assert_close(got, [e[s:] for e, s in zip(expected, starts)])
    sums = score_one(tiny_lm.model, ScoreGroup(prompt, completions, starts), token_budget=20)
    np.testing.assert_allclose(sums, [sum(e[s:]) for e, s in zip(expected, starts)], atol=TOL * 20, rtol=0)
    # a start at the end of a completion scores nothing
    none = score_one(tiny_lm.model, ScoreGroup(prompt, [completions[1]], [len(completions[1])]), per_token=True)
    assert none == [[]]


def test_empty_completion_scores_zero(tiny_lm, group, expected):
    prompt, completions = group
    got = score_one(tiny_lm.model, ScoreGroup(prompt, [[], completions[2]]), per_token=True)
    assert got[0] == []
    _assert_close([got[1]], [expected[2]])
    assert score_one(tiny_lm.model, ScoreGroup(prompt, [[], []])) == [0.0, 0.0]


def test_score_group_needs_a_prompt():
    with pytest.raises(ValueError, match="prompt"):
        ScoreGroup([], [[1, 2]])


def test_chunked_logsumexp_path_gives_same_numbers(tiny_lm, group, expected, monkeypatch):
    prompt, completions = group
    vocab = tiny_lm.model.get_output_embeddings().weight.shape[0]
    for elements, vocab_chunk in ((1, vocab), (3 * vocab, 1000), (7 * 2048, 2048)):
        monkeypatch.setattr(scoring_head, "LOGIT_CHUNK_ELEMENTS", elements)
        monkeypatch.setattr(scoring_head, "VOCAB_CHUNK", vocab_chunk)
        got = score_one(tiny_lm.model, ScoreGroup(prompt, completions), token_budget=40, per_token=True)
        _assert_close(got, expected)


@pytest.mark.parametrize("vocab_chunk", [1000, 2048, 1 << 20])
def test_token_logprobs_from_hidden_chunking(tiny_lm, monkeypatch, vocab_chunk):
    """Slices of the vocabulary (one not dividing it, so the last slice is short) and of the
    positions give the full log-softmax; targets include the first and last vocabulary ids."""
    torch.manual_seed(0)
    hidden = torch.randn(11, tiny_lm.model.config.hidden_size)
    vocab = tiny_lm.model.get_output_embeddings().weight.shape[0]
    targets = torch.randint(0, vocab, (11,))
    targets[0], targets[1] = 0, vocab - 1
    logits = tiny_lm.model.get_output_embeddings()(hidden).float()
    want = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    monkeypatch.setattr(scoring_head, "VOCAB_CHUNK", vocab_chunk)
    for elements in (1, 4 * vocab_chunk, 1 << 30):
        monkeypatch.setattr(scoring_head, "LOGIT_CHUNK_ELEMENTS", elements)
        with torch.no_grad():
            got = token_logprobs_from_hidden(tiny_lm.model, hidden, targets)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_token_logprobs_from_hidden_with_bias_and_wrapped_head(monkeypatch):
    """A biased head is sliced with its bias; a head that is not a plain Linear (an adapter's
    wrapper) is called as a module on the whole vocabulary. Both match the full log-softmax."""
    torch.manual_seed(1)
    linear = torch.nn.Linear(8, 5000, bias=True)
    torch.nn.init.normal_(linear.bias, std=3.0)
    hidden, targets = torch.randn(6, 8), torch.tensor([0, 4999, 2047, 2048, 17, 3000])
    want = torch.log_softmax(linear(hidden), -1).gather(1, targets[:, None])[:, 0]

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = linear
            self.weight = linear.weight

        def forward(self, x):
            return self.inner(x)

    monkeypatch.setattr(scoring_head, "LOGIT_CHUNK_ELEMENTS", 3 * 2048)
    for head in (linear, Wrapped()):
        model = SimpleNamespace(config=SimpleNamespace(), get_output_embeddings=lambda head=head: head)
        with torch.no_grad():
            got = token_logprobs_from_hidden(model, hidden, targets)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_order_of_completions_does_not_change_scores(tiny_lm, group):
    prompt, completions = group
    starts = [k % 2 for k in range(len(completions))]
    base = score_one(tiny_lm.model, ScoreGroup(prompt, completions, starts), token_budget=30)
    rnd = random.Random(0)
    for _ in range(3):
        perm = list(range(len(completions)))
        rnd.shuffle(perm)
        shuffled = score_one(
            tiny_lm.model,
            ScoreGroup(prompt, [completions[i] for i in perm], [starts[i] for i in perm]),
            token_budget=30,
        )
        np.testing.assert_allclose(shuffled, [base[i] for i in perm], atol=1e-4, rtol=0)


def test_duplicate_completions_get_identical_scores(tiny_lm, group):
    prompt, completions = group
    got = score_one(tiny_lm.model, ScoreGroup(prompt, [completions[3], completions[4], completions[3]]))
    assert abs(got[0] - got[2]) < 1e-5
    assert abs(got[0] - got[1]) > 1e-3  # different completions, different scores


@pytest.fixture(scope="module")
def groups(tokenizer):
    """Prompts of different lengths (1 to 40 tokens), each with completions of different lengths,
    some empty or scored from a later token."""
    rng = np.random.default_rng(1)
    out = []
    for k, (prompt_len, lengths) in enumerate(
        [(40, [3, 12, 0, 7]), (1, [5, 1, 20]), (17, [9, 9, 2, 30, 4]), (6, [11])]
    ):
        prompt = rng.integers(0, len(tokenizer), size=prompt_len).tolist()
        completions = [rng.integers(0, len(tokenizer), size=n).tolist() for n in lengths]
        starts = [min(n, (k + i) % 3) for i, n in enumerate(lengths)]
        out.append(ScoreGroup(prompt, completions, starts))
    return out


@pytest.fixture(scope="module")
def groups_expected(tiny_lm, groups):
    return [
        [
            reference_logprobs(tiny_lm.model, g.prompt_ids, c)[s:] if c else []
            for c, s in zip(g.completions, g.score_from)
        ]
        for g in groups
    ]


@pytest.mark.parametrize("budget", [1, 13, 40, 90, 10**6])
def test_groups_scored_together_match_full_softmax(tiny_lm, groups, groups_expected, budget):
    """Completions of different prompts in one sub-batch (left-padded caches, own positions) give
    each prompt's own numbers, whatever the budget cuts."""
    got = score_groups(tiny_lm.model, groups, token_budget=budget, per_token=True)
    for g, want in zip(got, groups_expected):
        _assert_close(g, want)
    sums = score_groups(tiny_lm.model, groups, token_budget=budget)
    for g, want in zip(sums, groups_expected):
        np.testing.assert_allclose(g, [sum(w) for w in want], atol=TOL * 20, rtol=0)


def test_groups_mix_prompts_in_one_forward_pass(tiny_lm, groups, monkeypatch):
    """With a large budget the completions of all prompts share forward passes."""
    seen = []
    real = scoring.batch_cache
    monkeypatch.setattr(
        scoring, "batch_cache", lambda prefixes, rows, *args: seen.append(set(rows)) or real(prefixes, rows, *args)
    )
    score_groups(tiny_lm.model, groups, token_budget=10**6)
    assert len(seen) == 1 and seen[0] == {0, 1, 2, 3}


def test_caches_that_cannot_be_stacked_score_one_prompt_per_pass(tiny_lm, groups, groups_expected, monkeypatch):
    monkeypatch.setattr(scoring, "plain_layers", lambda cache: False)
    seen = []
    real = scoring.repeated_cache
    monkeypatch.setattr(scoring, "repeated_cache", lambda prefix, rows: seen.append(prefix) or real(prefix, rows))
    monkeypatch.setattr(scoring, "batch_cache", None)  # stacking caches is not attempted
    got = score_groups(tiny_lm.model, groups, token_budget=40, per_token=True)
    assert len(seen) > len(groups)  # several passes, each on one prompt's cache
    for g, want in zip(got, groups_expected):
        _assert_close(g, want)


def test_sub_batches_respect_token_and_cache_budgets():
    lengths, prompts = [10, 9, 8, 2, 2], [0, 100, 0, 0, 300]
    batches = _sub_batches([0, 1, 2, 3, 4], lengths, 30, prompts)
    assert [i for b in batches for i in b] == [0, 1, 2, 3, 4]
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) * longest <= 30 or len(b) == 1
        assert len(b) * (max(prompts[i] for i in b) + longest) <= scoring.CACHE_BUDGET_FACTOR * 30 or len(b) == 1
    assert batches == [[0], [1], [2, 3], [4]]  # the long prompts (100, 300 tokens) go alone


def test_logit_transform_applies_softcap_and_scaling():
    logits = torch.tensor([[-100.0, 0.0, 3.0, 100.0]])
    capped = SimpleNamespace(config=SimpleNamespace(final_logit_softcapping=30.0))
    torch.testing.assert_close(_logit_transform(capped)(logits), torch.tanh(logits / 30.0) * 30.0)
    scaled = SimpleNamespace(config=SimpleNamespace(logits_scaling=4.0), logit_scale=0.5)
    torch.testing.assert_close(_logit_transform(scaled)(logits), logits * 0.5 / 4.0)
    plain = SimpleNamespace(config=SimpleNamespace())
    assert torch.equal(_logit_transform(plain)(logits), logits)


def test_scoring_attends_on_grouped_kv_heads_and_restores_sdpa(tiny_lm, groups, groups_expected, monkeypatch):
    """On CPU the grouped-query model scores through `_sdpa_gqa_attention` (masked mixed batches
    included, numbers as the plain computation), and is back on plain SDPA afterwards, also after an error."""
    assert tiny_lm.model.config.num_key_value_heads < tiny_lm.model.config.num_attention_heads
    calls = []
    real = scoring._sdpa_gqa_attention
    monkeypatch.setattr(
        scoring,
        "_sdpa_gqa_attention",
        lambda module, q, k, v, mask, **kw: calls.append(mask is not None) or real(module, q, k, v, mask, **kw),
    )
    got = score_groups(tiny_lm.model, groups, token_budget=10**6, per_token=True)
    for g, want in zip(got, groups_expected):
        _assert_close(g, want)
    assert True in calls  # the mixed sub-batch's left-padding mask went through it
    assert tiny_lm.model.config._attn_implementation == "sdpa"

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(scoring, "_sdpa_gqa_attention", fail)
    with pytest.raises(RuntimeError, match="boom"):
        score_groups(tiny_lm.model, groups)
    assert tiny_lm.model.config._attn_implementation == "sdpa"
    monkeypatch.undo()
    plain = tiny_lm.model(input_ids=torch.tensor([groups[0].prompt_ids]))  # still works outside the scorer
    assert torch.isfinite(plain.logits).all()


def test_gqa_attention_leaves_what_sdpa_cannot_do_to_transformers():
    """Softcapped attention is refused as transformers' SDPA refuses it, not computed without the cap."""
    q, kv = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    module = SimpleNamespace(is_causal=True, num_key_value_groups=2)
    with pytest.raises(ValueError, match="softcap"):
        scoring._sdpa_gqa_attention(module, q, kv, kv, None, softcap=50.0)
    out, _ = scoring._sdpa_gqa_attention(module, q, kv, kv, None)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, kv.repeat_interleave(2, 1), kv.repeat_interleave(2, 1), is_causal=True
    )
    torch.testing.assert_close(out, want.transpose(1, 2))
