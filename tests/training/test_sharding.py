"""Loading under the launch's sharding plan. ZeRO-3's load and training run in real processes in
`tests/test_scale_out.py`; here the single-process refusals."""

from __future__ import annotations

import pytest

from helpers import train_config, write_train_pairs
from icr.training.trainer import train_dpo


def test_an_fsdp_launch_on_cpu_is_refused_before_the_policy_loads(tmp_path, monkeypatch):
    """accelerate shards with FSDP on GPUs only; on CPU it would silently train unsharded."""
    from icr.core.errors import ConfigError
    from icr.training.registry import TrainingJob

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    pairs = write_train_pairs(tmp_path / "pairs.jsonl")
    job = TrainingJob(str(tmp_path / "no-model-here"), pairs, tmp_path / "model", train_config(), device="cpu")
    with pytest.raises(ConfigError, match="FSDP on GPUs only"):  # a load first would fail on the missing model
        train_dpo(job)
    assert not (tmp_path / "model").exists()
