"""Implicit-reward accuracy: Wilson intervals, held-out pair loading, accuracy per language and mode."""

from __future__ import annotations

import json
import math

import pytest

from icr.accuracy import (
    format_accuracy_table,
    load_preference_pairs,
    reward_accuracy,
    reward_accuracy_table,
    wilson_interval,
)
from icr.config import AccuracyConfig, RewardConfig
from icr.errors import DataError
from icr.records import PreferencePair


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
    _write(tmp_path, "de", [{"id": "1", "lang": "de", "prompt": "Hallo?", "prompt_en": "Hello?", "chosen": "Hi",
                             "rejected": "Nein"}])
    _write(tmp_path, "es", [{"id": "2", "lang": "es", "prompt": [{"role": "user", "content": "¿Hola?"}],
                             "prompt_en": "Hello?", "chosen": [{"role": "assistant", "content": "Hola"}],
                             "rejected": [{"role": "assistant", "content": "No"}], "extra": 1}])
    pairs = load_preference_pairs(tmp_path)
    assert pairs == [PreferencePair("1", "de", "Hallo?", "Hello?", "Hi", "Nein"),
                     PreferencePair("2", "es", "¿Hola?", "Hello?", "Hola", "No")]


def test_a_pair_missing_a_field_is_an_error_naming_file_line_and_id(tmp_path):
    _write(tmp_path, "fr", [{"id": "1", "lang": "fr", "prompt": "a", "prompt_en": "a", "chosen": "b", "rejected": "c"},
                            {"id": "7", "lang": "fr", "prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(DataError, match=r"fr\.jsonl:2: id 7: missing prompt_en"):
        load_preference_pairs(tmp_path)
    with pytest.raises(DataError, match="no preference pairs"):
        load_preference_pairs(tmp_path / "nowhere")


def test_a_reward_of_a_model_against_itself_ties_every_pair(tiny_lm):
    """r = β·(log π − log π) = 0 for every answer: every pair is a tie, counted as half."""
    pairs = [PreferencePair(str(i), lang, f"Frage {i}?", f"Question {i}?", f"Antwort {i}.", "Nein.")
             for i, lang in enumerate(["de", "de", "fr"])]
    table = reward_accuracy(tiny_lm, tiny_lm, pairs, RewardConfig(batch_prompts=2))
    assert set(table) == {"de", "fr"} and table["de"]["n"] == 2 and table["fr"]["n"] == 1
    assert all(row["accuracy"] == 0.5 and row["mean_margin"] == 0.0 for row in table.values())


def test_accuracy_table_per_mode_and_its_text(tiny_lm, tiny_ref_lm):
    pairs = [PreferencePair("1", "es", "¿Un color?", "A colour?", "Rojo.", "Tengo hambre."),
             PreferencePair("2", "es", "¿Dos más dos?", "Two plus two?", "Cuatro.", "Azul.")]
    config = AccuracyConfig(pairs="x", policy="p", reference="r", modes=["multilingual", "crosslingual"],
                            reward={"beta": 0.5})
    table = reward_accuracy_table(tiny_lm, tiny_ref_lm, pairs, config)
    assert list(table) == ["multilingual", "crosslingual"]
    # the two modes show the reward models other instructions, so their margins differ
    assert table["multilingual"]["es"]["mean_margin"] != table["crosslingual"]["es"]["mean_margin"]
    text = format_accuracy_table(table)
    assert text.splitlines()[0] == "| lang | multilingual | crosslingual |" and "(n=2)" in text
