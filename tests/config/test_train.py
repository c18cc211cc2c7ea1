"""`train.trl_args` (`icr.config.train`): any other DPOConfig field, checked before a model loads, and
the checkpointing fields that do not change the trained model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from icr.config import RunConfig, TrainConfig
from icr.config.train import ICR_SET_DPO_ARGS
from icr.training.trainer import dpo_config


def test_an_unknown_trl_arg_is_an_error_with_the_closest_field():
    unknown = "'max_grad_nrom' is not a DPOConfig field \\(did you mean 'max_grad_norm'"
    with pytest.raises(ValidationError, match=unknown):
        TrainConfig(trl_args={"max_grad_nrom": 0.5})


def test_a_trl_arg_icr_sets_itself_names_the_icr_field():
    with pytest.raises(ValidationError, match="'learning_rate' is set by icr: use train.learning_rate"):
        TrainConfig(trl_args={"learning_rate": 1e-3})
    with pytest.raises(ValidationError, match="apply to loss: dpo only"):
        TrainConfig(loss="kto", nll_weight=0, trl_args={"max_grad_norm": 0.5})


def test_trl_args_reach_dpo_config_and_are_part_of_the_fingerprint(tmp_path):
    config = TrainConfig(trl_args={"max_grad_norm": 0.25, "optim": "adafactor", "padding_free": True})
    args = dpo_config(config, str(tmp_path))
    assert (args.max_grad_norm, args.optim, args.padding_free) == (0.25, "adafactor", True)
    plain, tuned = RunConfig(), RunConfig(train=config.model_dump())
    assert plain.section_hash("train") != tuned.section_hash("train")


def test_checkpoint_settings_are_outside_the_fingerprint():
    plain = RunConfig()
    resumable = RunConfig(train={"save_steps": 10, "save_minutes": 5, "keep_checkpoints": 4})
    assert plain.section_hash("train") == resumable.section_hash("train")


def test_the_refused_keys_are_exactly_what_dpo_config_sets(monkeypatch, tmp_path):
    import trl

    passed: dict = {}
    monkeypatch.setattr(trl, "DPOConfig", lambda **kwargs: passed.update(kwargs))
    dpo_config(TrainConfig(save_steps=3, gradient_checkpointing=True), str(tmp_path))
    assert set(passed) == set(ICR_SET_DPO_ARGS)
    assert (passed["save_strategy"], passed["save_steps"], passed["save_total_limit"]) == ("steps", 3, 2)
