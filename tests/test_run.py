"""The iterative loop: a 2-iteration run on tiny models, and interrupted runs that resume to the
same files as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import icr.core.io
import icr.stages.train
import icr.training.trainer
from helpers import ITERATION_FILES, two_iteration_config
from icr.pipeline import run_iterations
from icr.stages import STAGES


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def clean_run(tiny_dir, tiny_ref_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run_iterations(two_iteration_config(out, "clean", tiny_dir, tiny_ref_dir))


def test_two_iterations_complete(clean_run):
    root = clean_run.root
    for t in (0, 1):
        for f in ITERATION_FILES:
            assert (root / f.format(t=t)).exists()
        assert (root / f"iter_{t}/model/model.safetensors").exists()
    stages = clean_run.manifest["stages"]
    assert all(
        stages[f"iter_{t}/{s}"]["status"] == "done" for t in (0, 1) for s in ("generate", "reward", "pairs", "train")
    )
    assert stages["iter_1/generate"]["policy"].endswith("iter_0/model")
    for stage in STAGES.values():  # every output a stage declares is there
        assert all(path.exists() for t in (0, 1) for path in stage.outputs(clean_run, t)), stage.name
    summary = (root / "summary.md").read_text()
    assert summary.count("\n| 1 | es |") == 1 and summary.count("\n| 0 | en |") == 1


def _crash_after_appends(monkeypatch, k):
    original = icr.core.io.JsonlAppender.write
    count = {"n": 0}

    def write(self, record):
        if count["n"] >= k:
            # leave a half-written line behind, as a kill in the middle of a write would
            self._f.write(b'{"id": "half')  # the appender is unbuffered binary
            self._f.flush()
            raise Crash("simulated kill")
        count["n"] += 1
        original(self, record)

    monkeypatch.setattr(icr.core.io.JsonlAppender, "write", write)


def _crash_before_model_rename(monkeypatch):
    def finite(obj):  # called after training, just before the model folder is renamed into place
        raise Crash("simulated kill after training")

    monkeypatch.setattr(icr.training.trainer, "_finite", finite)


@pytest.mark.slow
@pytest.mark.parametrize(
    "crashes",
    [
        # appends are counted from each restart: 1 → inside iteration 0's generate; 7 → inside its
        # reward; then after iteration 0's training; 3 → inside iteration 1's generate; 5 → its reward.
        [("append", 1), ("append", 7), ("train", None), ("append", 3), ("append", 5)],
    ],
)
def test_interrupted_run_resumes_to_identical_files(clean_run, tiny_dir, tiny_ref_dir, tmp_path, monkeypatch, crashes):
    config = two_iteration_config(tmp_path, "crashy", tiny_dir, tiny_ref_dir)
    for kind, k in crashes:
        with monkeypatch.context() as patch:
            if kind == "append":
                _crash_after_appends(patch, k)
            else:
                _crash_before_model_rename(patch)
            with pytest.raises(Crash):
                run_iterations(config)
    resumed = run_iterations(config)
    for t in (0, 1):
        for f in ITERATION_FILES:
            name = f.format(t=t)
            assert (resumed.root / name).read_bytes() == (clean_run.root / name).read_bytes(), name
        a = load_file(resumed.root / f"iter_{t}/model/model.safetensors")
        b = load_file(clean_run.root / f"iter_{t}/model/model.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in b), f"iter_{t} model differs"
    leftovers = [p for p in resumed.root.rglob(".*") if p.name.startswith(".model.")]
    assert not leftovers


def test_finished_run_is_not_redone(clean_run, monkeypatch):
    import icr.core.models

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(icr.core.models, "load_model", boom)
    monkeypatch.setattr(icr.training.trainer, "train_dpo", boom)
    before = (clean_run.root / "iter_1/pairs.jsonl").stat().st_mtime_ns
    run_iterations(clean_run.config)
    assert (clean_run.root / "iter_1/pairs.jsonl").stat().st_mtime_ns == before
