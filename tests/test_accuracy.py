"""Implicit-reward accuracy: Wilson intervals, held-out pair loading, summed and per-token rewards,
the split by length, accuracy per language and mode."""

from __future__ import annotations

import json
import math

import pytest
import torch

from icr.accuracy import (
    accuracy_row,
    format_accuracy_table,
    load_preference_pairs,
    reward_accuracy,
    reward_accuracy_table,
    summarize_language,
    wilson_interval,
)
from icr.config import AccuracyConfig, RewardConfig
from icr.core.errors import DataError
from icr.core.records import PreferencePair
from icr.engines.rewarding import implicit_rewards
from icr.engines.scoring.scorer import Scorer


def pair(chosen: str, rejected: str, lang: str = "en", pid: str = "1") -> PreferencePair:
    return PreferencePair(pid, lang, "Say hi.", "Say hi.", chosen, rejected)


def test_per_token_mean_can_reverse_a_summed_win_bought_by_length():
    # the long rejected answer sums more reward over its 40 tokens, but earns less per token
    row = accuracy_row(pair("Hello!", "Hello there, " * 10), {"reward": [2.0, 4.0], "scored_tokens": [4, 40]})
    assert row["win_summed"] == 0.0 and row["win_per_token"] == 1.0
    assert row["margin"] == -2.0 and not row["chosen_longer"]
    assert (row["len_chosen"], row["len_rejected"], row["tokens_chosen"], row["tokens_rejected"]) == (6, 130, 4, 40)
    tie = accuracy_row(pair("ab", "cd"), {"reward": [1.0, 1.0], "scored_tokens": [2, 2]})
    assert tie["win_summed"] == tie["win_per_token"] == 0.5


def test_summary_splits_by_which_answer_is_longer():
    rows = [  # chosen longer: 2 pairs, both won by the sum; chosen shorter: 2 pairs, both lost by the sum
        accuracy_row(pair("long answer", "short"), {"reward": [3.0, 1.0], "scored_tokens": [9, 3]}),
        accuracy_row(pair("longer answer", "x"), {"reward": [2.0, 0.0], "scored_tokens": [10, 1]}),
        accuracy_row(pair("a", "much longer"), {"reward": [0.5, 2.0], "scored_tokens": [1, 8]}),
        accuracy_row(pair("b", "much longer!"), {"reward": [0.1, 1.0], "scored_tokens": [1, 10]}),
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
    s = summarize_language([accuracy_row(pair("long answer", "x"), {"reward": [1.0, 0.0], "scored_tokens": [3, 1]})])
    assert s["chosen_not_longer"] == {
        "n": 0,
        "accuracy": None,
        "ci_low": None,
        "ci_high": None,
        "per_token_accuracy": None,
    }
    assert "| 0, –, – |" in format_accuracy_table({"crosslingual": {"en": s}})


def test_reward_accuracy_agrees_with_the_scored_rewards(tiny_lm, tiny_ref_lm):
    pairs = [
        pair("Hello! How can I help you today?", "Hi.", pid="a"),
        pair("Hi.", "Greetings, dear friend, what a pleasure.", pid="b"),
        pair("Bonjour !", "Salut, comment ça va ?", lang="fr", pid="c"),
    ]
    table = reward_accuracy(tiny_lm, tiny_ref_lm, pairs, RewardConfig(mode="multilingual", beta=1.0))
    assert set(table) == {"en", "fr"} and table["en"]["n"] == 2 and table["fr"]["n"] == 1
    wins = wins_per_token = 0.0
    policy, reference = Scorer(tiny_lm.model, 4096, tiny_lm.tokenizer), Scorer.of(tiny_ref_lm, 4096)
    for p in pairs[:2]:
        out = implicit_rewards(policy, reference, [(p.prompt, [p.chosen, p.rejected])], RewardConfig(beta=1.0))[0]
        (c, r), (nc, nr) = out["reward"], out["scored_tokens"]
        wins += 1.0 if c > r else 0.5 if c == r else 0.0
        wins_per_token += 1.0 if c / nc > r / nr else 0.5 if c / nc == r / nr else 0.0
    assert table["en"]["accuracy"] == pytest.approx(wins / 2)
    assert table["en"]["per_token"]["accuracy"] == pytest.approx(wins_per_token / 2)
    assert table["en"]["chosen_longer"]["n"] == 1 and table["en"]["chosen_not_longer"]["n"] == 1
    text = format_accuracy_table({"multilingual": table})
    assert "| multilingual | en | 2 |" in text and "| multilingual | fr | 1 |" in text


def test_wilson_interval_matches_the_formula_and_stays_in_bounds():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # the textbook 95% score interval of 8/10
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high)  # symmetric around one half
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def _write(folder, lang, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{lang}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def test_pairs_load_from_a_folder_with_strings_or_messages(tmp_path):
    _write(
        tmp_path,
        "de",
        [{"id": "1", "lang": "de", "prompt": "Hallo?", "prompt_en": "Hello?", "chosen": "Hi", "rejected": "Nein"}],
    )
    _write(
        tmp_path,
        "es",
        [
            {
                "id": "2",
                "lang": "es",
                "prompt": [{"role": "user", "content": "¿Hola?"}],
                "prompt_en": "Hello?",
                "chosen": [{"role": "assistant", "content": "Hola"}],
                "rejected": [{"role": "assistant", "content": "No"}],
                "extra": 1,
            }
        ],
    )
    pairs = load_preference_pairs(tmp_path)
    assert pairs == [
        PreferencePair("1", "de", "Hallo?", "Hello?", "Hi", "Nein"),
        PreferencePair("2", "es", "¿Hola?", "Hello?", "Hola", "No"),
    ]


def test_a_pair_missing_a_field_is_an_error_naming_file_line_and_id(tmp_path):
    _write(
        tmp_path,
        "fr",
        [
            {"id": "1", "lang": "fr", "prompt": "a", "prompt_en": "a", "chosen": "b", "rejected": "c"},
            {"id": "7", "lang": "fr", "prompt": "a", "chosen": "b", "rejected": "c"},
        ],
    )
    with pytest.raises(DataError, match=r"fr\.jsonl:2: id 7: missing prompt_en"):
        load_preference_pairs(tmp_path)
    with pytest.raises(DataError, match="no preference pairs"):
        load_preference_pairs(tmp_path / "nowhere")


def test_a_reward_of_a_model_against_itself_ties_every_pair(tiny_lm):
    """r = β·(log π − log π) = 0 for every answer: every pair is a tie, counted as half."""
    pairs = [
        PreferencePair(str(i), lang, f"Frage {i}?", f"Question {i}?", f"Antwort {i}.", "Nein.")
        for i, lang in enumerate(["de", "de", "fr"])
    ]
    table = reward_accuracy(tiny_lm, tiny_lm, pairs, RewardConfig(batch_prompts=2))
    assert set(table) == {"de", "fr"} and table["de"]["n"] == 2 and table["fr"]["n"] == 1
    assert all(row["accuracy"] == 0.5 and row["mean_margin"] == 0.0 for row in table.values())


def test_accuracy_table_per_mode_and_its_text(tiny_lm, tiny_ref_lm):
    pairs = [
        PreferencePair("1", "es", "¿Un color?", "A colour?", "Rojo.", "Tengo hambre."),
        PreferencePair("2", "es", "¿Dos más dos?", "Two plus two?", "Cuatro.", "Azul."),
    ]
    config = AccuracyConfig(
        pairs="x", policy="p", reference="r", modes=["multilingual", "crosslingual"], reward={"beta": 0.5}
    )
    table = reward_accuracy_table(tiny_lm, tiny_ref_lm, pairs, config)
    assert list(table) == ["multilingual", "crosslingual"]
    # the two modes show the reward models other instructions, so their margins differ
    assert table["multilingual"]["es"]["mean_margin"] != table["crosslingual"]["es"]["mean_margin"]
    text = format_accuracy_table(table)
    assert "| multilingual | es | 2 |" in text and "| crosslingual | es | 2 |" in text


def test_reward_accuracy_loads_its_models_with_the_configured_dtype(tiny_dir, tiny_ref_dir, tmp_path):
    """`icr reward-accuracy --dtype` reaches the loaded weights (through `ModelsConfig.load`)."""
    from icr.config import AccuracyConfig
    from icr.score import load_scoring_models

    config = AccuracyConfig(
        pairs=str(tmp_path), policy=str(tiny_dir), reference=str(tiny_ref_dir), dtype="bfloat16", device="cpu"
    )
    policy, reference, translator = load_scoring_models(config.models, needs_translator=True)
    assert policy.model.dtype == reference.model.dtype == torch.bfloat16
    assert translator is policy
    float32 = config.models.model_copy(update={"dtype": "float32"}).load(str(tiny_dir))
    assert float32.model.dtype == torch.float32
