"""Stage status files: every stage, when it starts (`icr.stages.Stage.execute`), writes
`iter_<t>/status/<stage>.json`: when, how many units it expects and had already (a resumed stage),
which JSONL files hold one record per unit, the process id and host; training also updates it with
its optimizer steps. `icr.observe.status` reads them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from icr.core.io import write_json_atomic
from icr.runtime.jobs import leftover_parts
from icr.runtime.layout import RunLayout


def status_file(root: Path, t: int, stage: str) -> Path:
    return RunLayout(root).status_file(t, stage)


def count_records(root: Path, files: Sequence[str]) -> int:
    """Records written so far to `files` (relative to the run folder) and to their part files."""
    paths = [Path(root) / f for f in files]
    return sum(p.read_bytes().count(b"\n") for path in paths for p in [path, *leftover_parts(path)] if p.is_file())


def stage_started(
    root: Path, t: int, stage: str, iterations: int, expected: int | None, unit: str, record_files: Sequence[Path] = ()
) -> None:
    """Record that a stage starts (called on the main process): it will produce `expected` `unit`s,
    one JSON line each in `record_files` when it has them."""
    files = [str(Path(f).relative_to(root)) for f in record_files]
    write_json_atomic(
        status_file(root, t, stage),
        {
            "stage": stage,
            "iteration": t,
            "iterations": iterations,
            "unit": unit,
            "expected": expected,
            "records": files,
            "done_at_start": count_records(root, files),
            "started": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
    )


def stage_progress(root: Path, t: int, stage: str, done: int, expected: int) -> None:
    """Update a running stage's own count (training: optimizer steps)."""
    path = status_file(root, t, stage)
    info = (
        json.loads(path.read_text())
        if path.exists()
        else {
            "stage": stage,
            "iteration": t,
            "started": time.time(),
            "done_at_start": 0,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "unit": "step",
        }
    )
    info.update(done=done, expected=expected, updated=time.time())
    write_json_atomic(path, info)


def train_status_callback(root: Path, t: int, every_s: float = 5.0):
    """A transformers callback writing the training steps into the status file (at most every `every_s`)."""
    from transformers import TrainerCallback

    class TrainStatus(TrainerCallback):
        last = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            if state.is_world_process_zero and (now - self.last >= every_s or state.global_step == state.max_steps):
                self.last = now
                stage_progress(root, t, "train", state.global_step, state.max_steps)

    return TrainStatus()
