"""`train.loss: kto`: the pairs as KTO examples, and a KTO training that moves the weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from helpers import TRAIN_PAIRS, train_config, write_train_pairs
from icr.config import ConfigError, load_config
from icr.core.io import read_json, read_jsonl
from icr.core.models import load_model
from icr.training.kto import kto_examples, kto_trainer, train_kto
from icr.training.reference_logps import pair_logps
from icr.training.registry import TRAINERS, TrainingJob, trainer_for


def test_each_pair_gives_a_desirable_chosen_and_an_undesirable_rejected(tmp_path):
    write_train_pairs(tmp_path / "p.jsonl")
    pairs = read_jsonl(tmp_path / "p.jsonl")
    examples = kto_examples(pairs)
    assert len(examples) == 2 * len(pairs)
    for pair, good, bad in zip(pairs, examples[0::2], examples[1::2]):
        assert good == {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True}
        assert bad == {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}
    assert [e["completion"][0]["content"] for e in examples] == [t for _, c, r in TRAIN_PAIRS for t in (c, r)]


def test_kto_needs_no_nll_term_and_is_registered():
    with pytest.raises(ConfigError, match="nll_weight: 0"):
        load_config(overrides={"train.loss": "kto"})
    assert load_config(overrides={"train.loss": "kto", "train.nll_weight": 0}).train.loss == "kto"
    assert set(TRAINERS) == {"dpo", "kto"} and trainer_for("kto") is train_kto


@pytest.mark.parametrize("precompute_ref", [True, False])
def test_a_kto_training_changes_the_weights_and_saves_a_model(tiny_dir, tmp_path, precompute_ref):
    pairs_path = tmp_path / "p.jsonl"
    write_train_pairs(pairs_path)
    out = tmp_path / "model"
    config = train_config(loss="kto", batch_size=2, precompute_ref=precompute_ref)
    metrics = train_kto(TrainingJob(str(tiny_dir), pairs_path, out, config, 4096, device="cpu"))
    assert metrics["steps"] == 2 and metrics["examples"] == 8  # 8 examples, 4 per device step
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(out / "model.safetensors")
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert changed, "KTO training left every weight unchanged"
    saved = read_json(out / "train_metrics.json")
    assert saved["config"]["loss"] == "kto" and any("loss" in row for row in saved["log_history"])
    assert not list(tmp_path.glob(".model.partial*"))


def test_precomputed_reference_logps_are_those_of_the_chosen_and_rejected(tiny_dir, tmp_path):
    """TRL's precomputed ref_logps of each example equal icr's reference scorer on the same pair's
    chosen (desirable) and rejected (undesirable) response."""
    write_train_pairs(tmp_path / "p.jsonl")
    pairs = read_jsonl(tmp_path / "p.jsonl")
    lm = load_model(str(tiny_dir), device="cpu")
    trainer = kto_trainer(lm, pairs, train_config(loss="kto", batch_size=2), str(tmp_path / "t"))
    assert {"ref_logps", "ref_KL_logps"} <= set(trainer.train_dataset.column_names)
    ours = pair_logps(lm, pairs, 64, 4096)
    trl = trainer.train_dataset["ref_logps"]
    assert trl[0::2] == pytest.approx([r.chosen for r in ours], abs=1e-3)
    assert trl[1::2] == pytest.approx([r.rejected for r in ours], abs=1e-3)
