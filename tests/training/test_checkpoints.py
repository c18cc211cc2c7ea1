"""Resumable training: checkpoints that are complete or ignored, and a SIGKILLed training that
resumes where it was and ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import train_config, write_train_pairs
from icr.training.checkpoints import COMPLETE, inputs_key, is_complete, mark_complete, prepare

REPO = Path(__file__).resolve().parents[2]


def _checkpoint(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "optimizer.pt").write_bytes(b"o" * 50)
    mark_complete(folder)
    return folder


def test_prepare_returns_the_newest_complete_checkpoint_and_removes_the_rest(tmp_path):
    root = tmp_path / "model-checkpoints"
    prepare(root, "key-a")
    _checkpoint(root, 2)
    newest_complete = _checkpoint(root, 4)
    truncated = _checkpoint(root, 6)
    (truncated / "optimizer.pt").write_bytes(b"o" * 10)  # killed while copying / a truncated file
    unrecorded = root / "checkpoint-8"
    unrecorded.mkdir()
    (unrecorded / "model.safetensors").write_bytes(b"w")  # killed during the save: no completion record
    assert not is_complete(truncated) and not is_complete(unrecorded)

    assert prepare(root, "key-a") == newest_complete
    assert sorted(p.name for p in root.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_checkpoints_of_other_inputs_are_removed_not_resumed(tmp_path):
    root = tmp_path / "model-checkpoints"
    prepare(root, "key-a")
    _checkpoint(root, 3)
    assert prepare(root, "key-b") is None
    assert not list(root.glob("checkpoint-*"))


def test_a_corrupt_completion_record_is_not_trusted(tmp_path):
    root = tmp_path / "c"
    prepare(root, "k")
    folder = _checkpoint(root, 1)
    (folder / COMPLETE).write_text("{not json")
    assert prepare(root, "k") is None


def test_inputs_key_follows_the_pairs_and_training_settings_but_not_checkpointing(tmp_path):
    pairs = write_train_pairs(tmp_path / "p.jsonl")
    base = inputs_key(pairs, "m", train_config(), 1)
    assert inputs_key(pairs, "m", train_config(save_steps=5, keep_checkpoints=4, save_minutes=1), 1) == base
    assert inputs_key(pairs, "m", train_config(learning_rate=1e-4), 1) != base
    assert inputs_key(pairs, "m", train_config(), 2) != base  # the process count sets each one's data
    assert inputs_key(pairs, "other", train_config(), 1) != base
    pairs.write_text(pairs.read_text().replace("apple", "pear"))
    assert inputs_key(pairs, "m", train_config(), 1) != base


TRAINING = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from transformers import TrainerCallback
    from helpers import TOKEN_BUDGET, train_config
    import logging
    from icr.core.logs import configure_logging
    from icr.training.registry import TrainingJob
    from icr.training.trainer import train_dpo

    kill_at = int(sys.argv[1])

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    configure_logging(logging.INFO, rich=False)
    config = train_config(batch_size=1, epochs=2, learning_rate=1e-3, warmup_ratio=0.25, lr_scheduler="linear",
                          save_steps=int(sys.argv[2]) or None, keep_checkpoints=2)
    job = TrainingJob({model!r}, Path({pairs!r}), Path({out!r}), config, TOKEN_BUDGET, device="cpu",
                      callbacks=(KillAfterSave(),))
    print(json.dumps(train_dpo(job)["steps"]))
    """
)


def _train(tmp_path: Path, name: str, tiny_dir: Path, pairs: Path, kill_at: int, save_steps: int):
    script = TRAINING.format(tests=str(REPO / "tests"), model=str(tiny_dir), pairs=str(pairs), out=str(tmp_path / name))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-c", script, str(kill_at), str(save_steps)], env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_a_sigkilled_training_resumes_from_its_newest_complete_checkpoint(tiny_dir, tmp_path):
    pairs = write_train_pairs(tmp_path / "p.jsonl")  # 4 pairs, batch 1, 2 epochs: 8 optimizer steps
    killed = _train(tmp_path, "model", tiny_dir, pairs, kill_at=5, save_steps=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = tmp_path / "model-checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    # a save cut short at the next step: copied, then a file truncated; it must be skipped
    partial = checkpoints / "checkpoint-6"
    shutil.copytree(checkpoints / "checkpoint-5", partial)
    weights = partial / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    resumed = _train(tmp_path, "model", tiny_dir, pairs, kill_at=-1, save_steps=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint at step 6 is incomplete" in resumed.stderr
    assert "resumed at step 5 from" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == 8
    assert not checkpoints.exists(), "checkpoints are removed once the model is promoted"

    straight = _train(tmp_path, "straight", tiny_dir, pairs, kill_at=-1, save_steps=0)
    assert straight.returncode == 0, straight.stderr[-3000:]
    after_resume = load_file(tmp_path / "model" / "model.safetensors")
    uninterrupted = load_file(tmp_path / "straight" / "model.safetensors")
    assert after_resume.keys() == uninterrupted.keys()
    # optimizer, scheduler and data order are restored exactly, so the weights are equal, not close
    for name, tensor in uninterrupted.items():
        assert torch.equal(after_resume[name], tensor), name
