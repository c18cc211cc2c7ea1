"""Stage 0: English preference data in TRL's formats, and English DPO through the shared trainer."""

from __future__ import annotations

import json

import pytest

from icr.align import align_english, load_english_preferences
from icr.config import AlignConfig
from icr.core.errors import DataError
from icr.core.io import read_json


def test_embedded_preferences_split_into_disjoint_train_and_heldout():
    train = load_english_preferences("embedded:demo", "train")
    heldout = load_english_preferences("embedded:demo", "heldout")
    assert train and heldout and not {p["id"] for p in train} & {p["id"] for p in heldout}
    pair = train[0]
    assert pair["lang"] == "en" and pair["prompt"][0]["role"] == "user"
    assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"


def test_strings_and_messages_are_both_accepted_and_bad_rows_name_the_row(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
        {
            "id": "m",
            "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": "Bye.",
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_english_preferences(str(path), split=None)
    assert [p["id"] for p in pairs] == ["1", "m"]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Hi?"}]
    assert len(pairs[1]["prompt"]) == 2 and pairs[1]["rejected"] == [{"role": "assistant", "content": "Bye."}]
    path.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!"}) + "\n")
    with pytest.raises(DataError, match="row 1: missing rejected"):
        load_english_preferences(str(path), split=None)
    with pytest.raises(DataError, match="no preference pairs"):
        load_english_preferences("embedded:demo", split="nonexistent")


def test_align_english_trains_a_model_from_the_config(tiny_dir, tmp_path):
    source = tmp_path / "four.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in load_english_preferences("embedded:demo")[:4]))
    out = tmp_path / "models" / "pi_dpo"
    config = AlignConfig(
        model=str(tiny_dir),
        data=str(source),
        output=str(out),
        device="cpu",
        train={"batch_size": 2, "grad_accum": 1, "max_length": 64, "learning_rate": 1e-3},
    )
    metrics = align_english(config)
    assert metrics["pairs"] == 4 and metrics["steps"] == 2
    assert (out / "model.safetensors").exists() and read_json(out / "train_metrics.json")["pairs"] == 4
    assert (tmp_path / "models" / "pi_dpo-english-pairs.jsonl").exists()
