"""Typed records (`icr.core.records`): each reads its on-disk JSON and writes it back unchanged, keys in
the files' order; `TrainingPair.preference_pair` is the one conversion between the pair formats."""

from __future__ import annotations

import json

import pytest

from helpers import select_json
from icr.config import PairsConfig
from icr.core.records import GenerationRecord, PreferencePair, RewardRecord, TrainingPair

GENERATION = {
    "id": "p1",
    "lang": "es",
    "prompt": "¿Qué es la fotosíntesis?",
    "responses": ["Es un proceso de las plantas.", "No lo sé"],
    "response_tokens": [9, 4],
    "truncated": [False, True],
    "seed": 1234,
}
SKIPPED_GENERATION = {
    **GENERATION,
    "responses": [],
    "response_tokens": [],
    "truncated": [],
    "skipped": "prompt too long",
}
HEAD = {
    "id": "p1",
    "lang": "es",
    "mode": "crosslingual",
    "prompt": GENERATION["prompt"],
    "prompt_en": "What is photosynthesis?",
    "responses": GENERATION["responses"],
}
SCORES = {
    "reward_prompt": "Please answer the following instruction using only Spanish ...\n\nWhat is photosynthesis?",
    "logp_policy": [-20.5, -9.25],
    "logp_ref": [-22.0, -9.0],
    "scored_tokens": [9, 4],
    "reward": [0.15, -0.025],
}
REWARD = {**HEAD, **SCORES}
TRANSLATED_REWARD = {
    **HEAD,
    "mode": "translate",
    "translations": ["It is a process of plants.", "I don't know"],
    **SCORES,
}
SKIPPED_REWARD = {**HEAD, "responses": [], "skipped": "prompt too long"}


def unchanged(record_type, record: dict) -> bool:
    """Read and written back: the same JSON text (values, and keys in the same order)."""
    return json.dumps(record_type.from_json(record).to_json()) == json.dumps(record)


@pytest.mark.parametrize("record", [GENERATION, SKIPPED_GENERATION], ids=["sampled", "skipped"])
def test_generation_record_round_trips(record):
    assert unchanged(GenerationRecord, record)
    assert GenerationRecord.from_json(record).skipped == record.get("skipped")


@pytest.mark.parametrize(
    "record", [REWARD, TRANSLATED_REWARD, SKIPPED_REWARD], ids=["crosslingual", "translate", "skipped"]
)
def test_reward_record_round_trips(record):
    assert unchanged(RewardRecord, record)


def test_skipped_reward_record_has_no_scores():
    assert list(RewardRecord.from_json(SKIPPED_REWARD).to_json()) == [*HEAD, "skipped"]


def selected_pairs() -> list[dict]:
    """Rows of pairs.jsonl as the selection writes them."""
    reward = {**REWARD, "responses": ["Es un proceso de las plantas.", "No lo sé", "Sí."]}
    reward.update(logp_policy=[-20.5, -9.25, -3.0], logp_ref=[-22.0, -9.0, -3.5], scored_tokens=[9, 4, 2])
    reward["reward"] = [0.1 * (p - r) for p, r in zip(reward["logp_policy"], reward["logp_ref"])]
    pairs, _ = select_json([reward], PairsConfig(language_filter="off"))
    assert len(pairs) == 1
    return pairs


def test_training_pair_round_trips_the_rows_the_selection_writes():
    row = selected_pairs()[0]
    assert unchanged(TrainingPair, row)
    assert row["prompt"] == [{"role": "user", "content": REWARD["prompt"]}]  # TRL's conversational format
    assert TrainingPair.from_json(row).scores["alpha"] == row["alpha"]


def test_preference_pair_is_the_one_conversion_and_keeps_the_texts():
    row = selected_pairs()[0]
    pair = TrainingPair.from_json(row).preference_pair()
    assert pair == PreferencePair(
        "p1",
        "es",
        REWARD["prompt"],
        REWARD["prompt_en"],
        row["chosen"][0]["content"],
        row["rejected"][0]["content"],
    )
    assert pair.chosen != pair.rejected
    assert pair == PreferencePair.from_json(row)  # held-out pairs read from the same row agree


def test_pairs_given_as_plain_strings_read_as_messages_do():
    """A TRL preference row with strings (no prompt_en): the same pair as with messages; the prompt
    stands in for the English one."""
    strings = {"id": 7, "lang": "en", "prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
    messages = {
        **strings,
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    assert TrainingPair.from_json(strings) == TrainingPair.from_json(messages)
    pair = TrainingPair.from_json(strings).preference_pair()
    assert pair == PreferencePair("7", "en", "Say hi.", "Say hi.", "Hi!", "No.")
    assert TrainingPair.from_json(strings).to_json()["chosen"] == messages["chosen"]


def test_files_written_with_n_tokens_are_read_with_the_new_names():
    """Generation and reward files from before the rename (`n_tokens` for both counts) still load:
    as `response_tokens` (generated tokens) and `scored_tokens` (tokens the reward summed)."""
    old_generation = {("n_tokens" if k == "response_tokens" else k): v for k, v in GENERATION.items()}
    assert GenerationRecord.from_json(old_generation).to_json() == GENERATION
    old_reward = {("n_tokens" if k == "scored_tokens" else k): v for k, v in REWARD.items()}
    assert json.dumps(RewardRecord.from_json(old_reward).to_json()) == json.dumps(REWARD)
