"""Responses as scorer rows: an instruction and its responses become one `ScoreGroup` (the
responses as completions of their shared prompt), tokenized as `reward.score_tokens` says.

    all         TRL's tokens (`icr.core.chat.tokenize_exchange`): every response token and what the
                template writes after it (end-of-turn token(s), ChatML's newline), exactly what DPO
                trains on;
    skip_first  the released scorer (utils/compute_reward_score.py, prepare_data and compute_score):
                prompt + response + end-of-turn tokenized as one string (`released_exchange`), and
                positions masked rather than the tokens they predict, which drops the first response
                token: the response minus its first token, plus the end-of-turn token.
"""

from __future__ import annotations

from icr.core.chat import common_prefix_length, released_exchange, tokenize_exchange
from icr.engines.scoring.scorer import ScoreGroup, Scorer

# `reward.score_tokens` → (how an exchange is tokenized, leading completion tokens left out)
SCORED_TOKENS = {"all": (tokenize_exchange, 0), "skip_first": (released_exchange, 1)}


def exchange_group(
    tokenizer, instruction: str, responses: list[str], score_tokens: str
) -> tuple[ScoreGroup, list[int]]:
    """The responses as completions of their shared prompt, and each response's scored token count."""
    tokenize, skip = SCORED_TOKENS[score_tokens]
    exchanges = [tokenize(tokenizer, instruction, r) for r in responses]
    # one string per response can end its prompt part with other tokens (a merge across the cut)
    shared = min(common_prefix_length(exchanges[0][0], p) for p, _ in exchanges)
    skipped = [min(skip, len(c)) for _, c in exchanges]
    group = ScoreGroup(
        exchanges[0][0][:shared],
        [p[shared:] + c for p, c in exchanges],
        [len(p) - shared + k for (p, _), k in zip(exchanges, skipped)],
    )
    return group, [len(c) - k for (_, c), k in zip(exchanges, skipped)]


def score_responses(
    scorer: Scorer, items: list[tuple[str, list[str]]], score_tokens: str = "all"
) -> list[tuple[list[float], list[int]]]:
    """For each (instruction, responses): (summed log π(y|x) per response, scored token counts), all
    items scored together by `scorer` (made with its model's tokenizer, `Scorer.of`)."""
    if scorer.tokenizer is None:
        raise ValueError("score_responses needs a scorer made with its tokenizer (Scorer.of)")
    prepared = [exchange_group(scorer.tokenizer, text, responses, score_tokens) for text, responses in items]
    logps = scorer.score_groups([group for group, _ in prepared])
    return [(lp, n_tokens) for lp, (_, n_tokens) in zip(logps, prepared)]
