"""The run directory (`icr.runtime.rundir`) without running anything: which model each iteration uses, the
models of a run folder and what is not one, and the temporary files a killed run leaves. (Stages
recorded as finished, and refused when their config changed, are tested on real runs in test_pipeline.)"""

from __future__ import annotations

import pytest

from helpers import run_config
from icr.core.errors import DataError
from icr.runtime.rundir import RunDir, run_models


@pytest.mark.parametrize("reference", ["original", "previous"])
def test_each_iteration_scores_against_its_reference_and_samples_from_its_policy(tmp_path, reference):
    run = RunDir(run_config(tmp_path, "org/dpo", "org/sft", **{"iterations": 3, "reward.reference": reference}))
    assert [run.policy_spec(t) for t in range(3)] == ["org/dpo", str(run.model_dir(0)), str(run.model_dir(1))]
    assert run.model_dir(1) == run.root / "iter_1" / "model"
    references = [run.reward_reference_spec(t) for t in range(3)]
    if reference == "original":
        assert references == ["org/sft"] * 3
    else:  # π^{t−1}: the configured reference at t = 0, then the policy of the iteration before
        assert references == ["org/sft", "org/dpo", str(run.model_dir(0))]


def test_run_models_refuses_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(DataError, match="not a run folder"):
        run_models(tmp_path)
    (tmp_path / "config.yaml").write_text("models:\n  reference: org/sft\n")
    with pytest.raises(DataError, match="no models.policy"):
        run_models(tmp_path)


def test_opening_a_run_removes_the_temporary_files_of_an_interrupted_write(tmp_path):
    cfg = run_config(tmp_path, "org/dpo", "org/sft")
    cfg.run_dir.joinpath("iter_0", "rewards").mkdir(parents=True)
    stale = [cfg.run_dir / ".manifest.json.x1y2.tmp", cfg.run_dir / "iter_0" / "rewards" / ".es.jsonl.ab.tmp"]
    kept = cfg.run_dir / "iter_0" / "rewards" / "es.jsonl"
    for path in [*stale, kept]:
        path.write_text("{")
    RunDir(cfg)
    assert not any(p.exists() for p in stale) and kept.exists()
