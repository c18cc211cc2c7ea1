"""`train.loss` → the function that trains π^{t+1} from π^t on a pairs file. Every entry takes one
`TrainingJob` and returns its metrics (`steps`, `after`, ...)."""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from icr.config import TrainConfig
from icr.core.distributed import current_shard
from icr.core.faults import disk_errors, write_section

TRAINERS: dict[str, tuple[str, str]] = {
    "dpo": ("icr.training.trainer", "train_dpo"),  # DPO + λ·NLL(chosen), the paper (§3.3)
    "kto": ("icr.training.kto", "train_kto"),  # TRL's KTO on the pairs as unpaired examples
}


@dataclass(frozen=True)
class TrainingJob:
    """One training: π^{t+1} from `model_spec` (π^t, also the reference) on `pairs_file`, saved at
    `out_dir` (complete or not at all). `token_budget` is the scorer's for the reference log-probs;
    trackers (`config.report_to`) log under `tracking_dir` as `run_name`, with `pair_stats` (the
    iteration's `pairs_stats.json`) at step 0; `callbacks` are extra transformers callbacks."""

    model_spec: str
    pairs_file: Path
    out_dir: Path
    config: TrainConfig
    token_budget: int | str = 4096
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    run_name: str | None = None
    tracking_dir: Path | None = None
    pair_stats: dict | None = None
    callbacks: tuple = ()

    @property
    def scratch_dir(self) -> Path:
        """Beside `out_dir`, the same on every process (a sharded save writes into it from all of them)."""
        return self.out_dir.parent / f".{self.out_dir.name}.partial"

    @property
    def checkpoint_dir(self) -> Path:
        """Resumable checkpoints of this training (`icr.training.checkpoints`), beside `out_dir`."""
        return self.out_dir.parent / f"{self.out_dir.name}-checkpoints"


def trainer_for(loss: str) -> Callable[[TrainingJob], dict]:
    """The training function of `train.loss` (imported on use: each pulls in TRL)."""
    module, name = TRAINERS[loss]
    return getattr(importlib.import_module(module), name)


def fresh_scratch(job: TrainingJob) -> Path:
    """The job's scratch folder, emptied of what a killed run left there (all processes wait for it)."""
    shard = current_shard()
    if shard.is_main:
        shutil.rmtree(job.scratch_dir, ignore_errors=True)
    shard.wait()
    return job.scratch_dir


@contextmanager
def promoting(job: TrainingJob):
    """Yield the scratch model folder to save into; on success the main process moves it to
    `job.out_dir` in one step (an existing model moved aside first, so `out_dir` is never half
    deleted). A stop signal lets the save finish, and acts once the stage is recorded. The scratch
    folder is removed either way."""
    shard, model_dir = current_shard(), job.scratch_dir / "model"
    try:
        with write_section(completes_record=False), disk_errors(job.out_dir):
            yield model_dir
            if shard.is_main:
                if job.out_dir.exists():
                    os.replace(job.out_dir, job.scratch_dir / "previous")
                os.replace(model_dir, job.out_dir)
                shutil.rmtree(job.checkpoint_dir, ignore_errors=True)  # the model they led to is whole
    finally:
        shard.wait()
        if shard.is_main:
            shutil.rmtree(job.scratch_dir, ignore_errors=True)
