"""Checkpoints of a training, so that a preempted or killed one resumes where it was, not at step 0.

transformers' Trainer writes `checkpoint-<step>/` folders (weights, optimizer, scheduler, RNG states
and trainer_state.json) under `TrainingJob.checkpoint_dir`, at `train.save_steps` or when
`train.save_minutes` have passed since the last one, keeping the newest `train.keep_checkpoints`.
After each save every process has written its part; the main process then writes
`icr-complete.json` (each file's size) into the folder. On restart:

* checkpoints of other inputs (pairs file content, model, train settings, process count) are
  removed: resuming them would mix two trainings;
* a folder without that record, or whose files no longer have the recorded sizes (a kill during
  the save, a truncated copy), is removed and never loaded;
* the newest remaining checkpoint is the one to resume from (`Trainer.train(resume_from_checkpoint=…)`).

Resumed, a training ends with the same weights as an uninterrupted one: transformers restores the
optimizer, scheduler and RNG states, and skips the batches already trained. Its length-grouped
sampler draws each epoch's order from the global RNG at the epoch's start, which a restart
mid-epoch no longer has; `ResumableOrderMixin` records that state with each checkpoint and draws
the resumed epoch's order from it again.

The checkpoints are removed once the trained model is promoted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

from icr.config.base import hashed_fields
from icr.config.train import TrainConfig
from icr.core.distributed import current_shard
from icr.core.io import write_json_atomic

log = logging.getLogger(__name__)

COMPLETE = "icr-complete.json"
ORDER_STATE = "icr-order-rng-{rank}.pt"
INPUTS = "inputs.json"
STEP_FOLDER = re.compile(r"^checkpoint-(\d+)$")


def inputs_key(pairs_file: Path, model_spec: str, config: TrainConfig, processes: int) -> str:
    """What a checkpoint is valid for: the pairs' bytes, the model, the train settings that shape the
    trained model (the hashed ones: not checkpointing, tracking or the divergence guard), and the
    number of processes (it sets each one's data shard)."""
    digest = hashlib.sha256(pairs_file.read_bytes())
    settings = hashed_fields(config)
    digest.update(json.dumps([model_spec, settings, processes], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def is_complete(folder: Path) -> bool:
    """The folder has its completion record and every recorded file has its recorded size."""
    record = folder / COMPLETE
    if not record.exists():
        return False
    try:
        sizes = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in sizes.items())


def mark_complete(folder: Path) -> None:
    sizes = {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
    write_json_atomic(folder / COMPLETE, {k: v for k, v in sizes.items() if k != COMPLETE})


def step_folders(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of each checkpoint-<step> folder, oldest first."""
    found = [(int(m.group(1)), p) for p in checkpoint_dir.glob("checkpoint-*") if (m := STEP_FOLDER.match(p.name))]
    return sorted(found)


def prepare(checkpoint_dir: Path, key: str) -> Path | None:
    """Clear what cannot be resumed (see module doc) and return the newest complete checkpoint, or
    None. The main process clears; all processes wait for it and get the same answer."""
    shard = current_shard()
    if shard.is_main:
        recorded = checkpoint_dir / INPUTS
        if recorded.exists() and json.loads(recorded.read_text()).get("key") != key:
            log.info("checkpoints in %s are of other training inputs: removed", checkpoint_dir)
            shutil.rmtree(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded, {"key": key})
        for step, folder in step_folders(checkpoint_dir):
            if not is_complete(folder):
                log.warning("checkpoint at step %d is incomplete (%s): removed, not loaded", step, folder)
                shutil.rmtree(folder)
    shard.wait()
    complete = [folder for _, folder in step_folders(checkpoint_dir) if is_complete(folder)]
    return complete[-1] if complete else None


def checkpoint_callback(config: TrainConfig):
    """Saves by time (`save_minutes` since the last save) and records each finished save (`COMPLETE`)."""
    from transformers import TrainerCallback

    class Checkpoints(TrainerCallback):
        def __init__(self):
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            minutes = config.save_minutes
            if minutes is not None and time.monotonic() - self.last_save >= 60 * minutes:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()
            shard = current_shard()
            shard.wait()  # every process has written its part of the checkpoint
            if shard.is_main:
                mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            shard.wait()
            return control

    return Checkpoints()


def _replayable_sampler_class():
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class ReplayableLengthGroupedSampler(LengthGroupedSampler):
        """LengthGroupedSampler that remembers the RNG state each epoch's order was drawn from, and
        draws the epoch `replay["epoch"]` from `replay["rng"]` instead of the current state."""

        def __init__(self, *args, replay: dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.epoch, self.replay, self.drawn_from = 0, replay, None

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            if self.replay is not None and self.replay["epoch"] == self.epoch:
                torch.set_rng_state(self.replay["rng"])  # transformers restores the checkpoint's state after skipping
                self.replay = None
            self.drawn_from = {"epoch": self.epoch, "rng": torch.get_rng_state()}
            return super().__iter__()

    return ReplayableLengthGroupedSampler


class ResumableOrderMixin:
    """For a transformers Trainer: its length-grouped order survives a restart mid-epoch (module doc).
    Set `resume_from` to the checkpoint folder before `train()`."""

    resume_from: Path | None = None

    def _get_train_sampler(self, train_dataset=None):
        import torch
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is not LengthGroupedSampler:
            return sampler  # the seeded random sampler of accelerate already resumes exactly
        replay = None
        if self.resume_from is not None:
            saved = Path(self.resume_from) / ORDER_STATE.format(rank=self.args.process_index)
            replay = torch.load(saved, weights_only=True) if saved.exists() else None
        self.order_sampler = _replayable_sampler_class()(
            sampler.batch_size, lengths=sampler.lengths, generator=sampler.generator, replay=replay
        )
        return self.order_sampler

    def _save_checkpoint(self, model, trial):
        import torch

        super()._save_checkpoint(model, trial)
        sampler = getattr(self, "order_sampler", None)
        if sampler is not None and sampler.drawn_from is not None:
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            torch.save(sampler.drawn_from, folder / ORDER_STATE.format(rank=self.args.process_index))
