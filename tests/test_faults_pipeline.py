"""Faults of whole runs, in process: a disk that fills up at the N-th write of any stage, a model
save that fails, a training loss made NaN, a training that runs out of memory. Each stops the run
with a clear message; the restart ends with the files of an uninterrupted run."""

from __future__ import annotations

import errno
import os

import pytest
import torch
import transformers.modeling_utils
from safetensors.torch import load_file

import icr.core.faults
import icr.training.trainer
from helpers import ITERATION_FILES, two_iteration_config
from icr.core.faults import DiskWriteError, TrainingDiverged, TrainingOutOfMemory
from icr.core.io import read_json
from icr.pipeline import run_iterations
from icr.stages import STAGES
from icr.training.registry import TrainingJob


def one_iteration(out, name, tiny_dir, tiny_ref_dir):
    config = two_iteration_config(out, name, tiny_dir, tiny_ref_dir)
    config.iterations = 1
    return config


def run_files(root, iterations=1) -> dict[str, bytes]:
    return {f.format(t=t): (root / f.format(t=t)).read_bytes() for t in range(iterations) for f in ITERATION_FILES}


def same_weights(a, b) -> bool:
    x, y = (load_file(r / "model.safetensors") for r in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def clean(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """An uninterrupted one-iteration run."""
    return run_iterations(one_iteration(tmp_path_factory.mktemp("runs"), "clean", tiny_dir, tiny_ref_dir)).root


def enospc_at(monkeypatch, match: str, nth: int):
    """The nth write (from now on) to a file whose path contains `match` fails with ENOSPC after
    writing half its bytes, as a disk that fills up in the middle of it."""
    real, count = os.write, {"n": 0}

    def write(fd, data):
        if match in os.readlink(f"/proc/self/fd/{fd}"):
            count["n"] += 1
            if count["n"] == nth:
                real(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(icr.core.faults.os, "write", write)


# In run order: an append in the middle of a generation file, the first of another, the manifest
# (generate finished), appends of the rewards, the pairs file, the reference log-probs cache, the
# model's metrics (model saved, not yet promoted), the config written when training is recorded.
FULL_DISK_AT = [
    ("generations/en.jsonl", 2),
    ("generations/es.jsonl", 1),
    ("manifest.json", 1),
    ("rewards/en.jsonl", 1),
    ("rewards/es.jsonl", 3),
    ("pairs.jsonl", 1),
    ("ref_logps", 1),
    ("train_metrics.json", 1),
    ("config.yaml", 1),
]


@pytest.mark.slow
def test_full_disk_at_the_nth_write_of_every_stage_then_restart_gives_identical_files(
    clean, tiny_dir, tiny_ref_dir, tmp_path, monkeypatch
):
    config = one_iteration(tmp_path, "full", tiny_dir, tiny_ref_dir)
    for match, nth in FULL_DISK_AT:  # each a restart of the run left by the one before
        with monkeypatch.context() as patch:
            enospc_at(patch, match, nth)
            with pytest.raises(DiskWriteError, match=r"writing .+ failed: the disk is full \(.+ free in ") as err:
                run_iterations(config)
            assert match.split("/")[-1] in str(err.value)
    run_iterations(config)
    assert run_files(config.run_dir) == run_files(clean)
    assert same_weights(config.run_dir / "iter_0/model", clean / "iter_0/model")
    assert not list(config.run_dir.rglob(".*")), "temporary files left behind"


def test_full_disk_while_saving_the_model_promotes_nothing(clean, tiny_dir, tiny_ref_dir, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    root = clean

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # part of the weights, then the disk is full
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    config = one_iteration(tmp_path, "save", tiny_dir, tiny_ref_dir)
    with monkeypatch.context() as patch:
        patch.setattr(transformers.modeling_utils, "safe_save_file", save_file)
        with pytest.raises(DiskWriteError, match=r"iter_0/model failed: .*No space left on device.*free in"):
            run_iterations(config)
    assert not (config.run_dir / "iter_0/model").exists()
    assert "iter_0/train" not in read_json(config.run_dir / "manifest.json")["stages"]
    run_iterations(config)
    assert same_weights(config.run_dir / "iter_0/model", root / "iter_0/model")


def failing_loss(monkeypatch, when, fault):
    """The training loss of the step for which `when(trainer)` holds is made NaN (fault="nan"), or
    the step runs out of memory (fault="oom")."""
    real = icr.training.trainer._make_trainer_class

    def make():
        class Faulty(real()):
            def compute_loss(self, model, inputs, *args, **kwargs):
                loss = super().compute_loss(model, inputs, *args, **kwargs)
                if not when(self):
                    return loss
                if fault == "oom":
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (injected)")
                return loss * float("nan") if torch.is_tensor(loss) else (loss[0] * float("nan"), *loss[1:])

        return Faulty

    monkeypatch.setattr(icr.training.trainer, "_make_trainer_class", make)


def test_nan_loss_promotes_no_model_and_the_run_resumes_after_the_setting_changes(
    tiny_dir, tiny_ref_dir, tmp_path, monkeypatch, caplog
):
    config = two_iteration_config(tmp_path, "nan", tiny_dir, tiny_ref_dir)  # 2 iterations at learning rate 1e-3
    root = config.run_dir
    # as a learning rate too high for iteration 1 would: its loss is NaN at step 2, at 1e-3 only
    failing_loss(
        monkeypatch,
        lambda trainer: (
            "iter_1" in trainer.args.output_dir
            and trainer.state.global_step == 1
            and trainer.args.learning_rate == 1e-3
        ),
        "nan",
    )
    with pytest.raises(TrainingDiverged) as err:
        run_iterations(config)
    assert "training diverged: loss is nan at step 2 of" in str(err.value)
    assert "(starting loss" in str(err.value) and "No model was promoted" in str(err.value)
    manifest = read_json(root / "manifest.json")
    assert "iter_1/train" not in manifest["stages"] and not (root / "iter_1/model").exists()
    assert [(f["iteration"], f["kind"]) for f in manifest["failures"]] == [(1, "TrainingDiverged")]
    first = {**run_files(root, 1), "pi1": (root / "iter_0/model/model.safetensors").read_bytes()}

    config.train.learning_rate = 5e-4  # the user's fix; iteration 0 keeps its model trained at 1e-3
    run = run_iterations(config)
    assert (root / "iter_1/model/model.safetensors").exists()
    assert {**run_files(root, 1), "pi1": (root / "iter_0/model/model.safetensors").read_bytes()} == first
    assert run.manifest["stages"]["iter_0/train"]["config_hash"] == manifest["stages"]["iter_0/train"]["config_hash"]
    assert read_json(root / "iter_1/model/train_metrics.json")["config"]["learning_rate"] == 5e-4
    assert any("iter_0/train finished under other settings" in r.getMessage() for r in caplog.records)


def test_training_out_of_memory_names_the_settings_to_lower(clean, tiny_dir, tmp_path, monkeypatch):
    root = clean
    config = one_iteration(tmp_path, "oom", tiny_dir, tiny_dir).train
    failing_loss(monkeypatch, lambda trainer: True, "oom")
    with pytest.raises(TrainingOutOfMemory) as err:
        icr.training.trainer.train_dpo(
            TrainingJob(str(tiny_dir), root / "iter_0/pairs.jsonl", tmp_path / "model", config, 4096, device="cpu")
        )
    message = str(err.value)
    for setting in (
        "train.batch_size (now 2",
        "train.grad_accum",
        "train.max_length (now 96)",
        "train.gradient_checkpointing: true",
        "train.lora.enabled: true",
        "no model was saved",
    ):
        assert setting in message
    assert not (tmp_path / "model").exists()


def test_changed_train_settings_are_refused_unless_a_later_training_failed(tiny_dir, tiny_ref_dir, tmp_path):
    from icr.core.errors import ConfigError
    from icr.runtime.rundir import RunDir

    train = STAGES["train"]
    before = two_iteration_config(tmp_path, "hash", tiny_dir, tiny_ref_dir)
    RunDir(before).mark_done(0, train)
    after = before.model_copy(deep=True)
    after.train.learning_rate = 5e-4
    with pytest.raises(ConfigError, match="iter_0/train finished under a different config"):
        RunDir(after).is_done(0, train)
    run = RunDir(after)
    run.record_failure(0, train, TrainingDiverged("iteration 0 itself"))  # not a later iteration: no excuse
    with pytest.raises(ConfigError):
        run.is_done(0, train)
    run.record_failure(1, STAGES["generate"], TrainingDiverged("another stage's failure"))  # not this stage's
    with pytest.raises(ConfigError):
        run.is_done(0, train)
    run.record_failure(1, train, icr.core.faults.Preempted("SIGTERM"))  # a stop asks for no change of settings
    with pytest.raises(ConfigError):
        run.is_done(0, train)
    run.record_failure(1, train, TrainingDiverged("loss is nan at step 2"))
    assert RunDir(after).is_done(0, train)  # read back from the manifest
