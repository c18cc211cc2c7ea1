"""Implicit-reward accuracy: summed and per-token rewards, the split by length, mean lengths."""

from __future__ import annotations

import pytest

from icr.accuracy import (
    accuracy_row,
    format_accuracy_table,
    reward_accuracy,
    summarize_language,
)
from icr.config import RewardConfig
from icr.reward import score_responses


def pair(chosen: str, rejected: str, lang: str = "en", pid: str = "1") -> dict:
    return {"id": pid, "lang": lang, "prompt": "Say hi.", "prompt_en": "Say hi.", "chosen": chosen, "rejected": rejected}


def test_per_token_mean_can_reverse_a_summed_win_bought_by_length():
    # the long rejected answer sums more reward over its 40 tokens, but earns less per token
    row = accuracy_row(pair("Hello!", "Hello there, " * 10), {"reward": [2.0, 4.0], "n_tokens": [4, 40]})
    assert row["win_summed"] == 0.0 and row["win_per_token"] == 1.0
    assert row["margin"] == -2.0 and not row["chosen_longer"]
    assert (row["len_chosen"], row["len_rejected"], row["tokens_chosen"], row["tokens_rejected"]) == (6, 130, 4, 40)
    tie = accuracy_row(pair("ab", "cd"), {"reward": [1.0, 1.0], "n_tokens": [2, 2]})
    assert tie["win_summed"] == tie["win_per_token"] == 0.5


def test_summary_splits_by_which_answer_is_longer():
    rows = [  # chosen longer: 2 pairs, both won by the sum; chosen shorter: 2 pairs, both lost by the sum
        accuracy_row(pair("long answer", "short"), {"reward": [3.0, 1.0], "n_tokens": [9, 3]}),
        accuracy_row(pair("longer answer", "x"), {"reward": [2.0, 0.0], "n_tokens": [10, 1]}),
        accuracy_row(pair("a", "much longer"), {"reward": [0.5, 2.0], "n_tokens": [1, 8]}),
        accuracy_row(pair("b", "much longer!"), {"reward": [0.1, 1.0], "n_tokens": [1, 10]}),
    ]
    s = summarize_language(rows)
    assert s["n"] == 4 and s["accuracy"] == 0.5 and s["ci_low"] < 0.5 < s["ci_high"]
    assert s["chosen_longer"]["n"] == 2 and s["chosen_longer"]["accuracy"] == 1.0
    assert s["chosen_not_longer"]["n"] == 2 and s["chosen_not_longer"]["accuracy"] == 0.0
    # per token: 3/9 < 1/3 is a tie (0.5), 2/10 > 0 wins, 0.5 > 2/8 wins, 0.1 = 1/10 ties
    assert s["per_token"]["accuracy"] == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)
    assert s["chosen_longer"]["per_token_accuracy"] == pytest.approx(0.75)
    assert s["mean_len_chosen"] == pytest.approx((11 + 13 + 1 + 1) / 4)
    assert s["mean_tokens_rejected"] == pytest.approx((3 + 1 + 8 + 10) / 4)
    assert s["mean_margin"] == pytest.approx((2 + 2 - 1.5 - 0.9) / 4)


def test_an_empty_subset_reports_none_not_a_number():
    s = summarize_language([accuracy_row(pair("long answer", "x"), {"reward": [1.0, 0.0], "n_tokens": [3, 1]})])
    assert s["chosen_not_longer"] == {"n": 0, "accuracy": None, "ci_low": None, "ci_high": None,
                                      "per_token_accuracy": None}
    assert "| 0, –, – |" in format_accuracy_table({"crosslingual": {"en": s}})


def test_reward_accuracy_agrees_with_the_scored_rewards(tiny_lm, tiny_ref_lm):
    pairs = [pair("Hello! How can I help you today?", "Hi.", pid="a"),
             pair("Hi.", "Greetings, dear friend, what a pleasure.", pid="b"),
             pair("Bonjour !", "Salut, comment ça va ?", lang="fr", pid="c")]
    table = reward_accuracy(tiny_lm, tiny_ref_lm, pairs, RewardConfig(mode="multilingual", beta=1.0))
    assert set(table) == {"en", "fr"} and table["en"]["n"] == 2 and table["fr"]["n"] == 1
    wins = wins_per_token = 0.0
    for p in pairs[:2]:
        out = score_responses(tiny_lm, tiny_ref_lm, p["prompt"], [p["chosen"], p["rejected"]], beta=1.0)
        (c, r), (nc, nr) = out["reward"], out["n_tokens"]
        wins += 1.0 if c > r else 0.5 if c == r else 0.0
        wins_per_token += 1.0 if c / nc > r / nr else 0.5 if c / nc == r / nr else 0.0
    assert table["en"]["accuracy"] == pytest.approx(wins / 2)
    assert table["en"]["per_token"]["accuracy"] == pytest.approx(wins_per_token / 2)
    assert table["en"]["chosen_longer"]["n"] == 1 and table["en"]["chosen_not_longer"]["n"] == 1
    text = format_accuracy_table({"multilingual": table})
    assert "| multilingual | en | 2 |" in text and "| multilingual | fr | 1 |" in text
