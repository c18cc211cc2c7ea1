"""Faults of long runs, each turned into a clear stop that a restart recovers from.

* a full disk (`DiskWriteError`): a write that fails (ENOSPC or any OSError) stops the stage with a
  message naming the file and the free space; a half-written line is cut off, an atomic file or a
  model folder never replaces the old one, so a restart finds only whole records;
* preemption (`stop_on_signals`): SIGTERM/SIGINT stop the stage at once, except inside a write,
  which is finished first (`write_section`);
* out of memory (`OutOfMemory`): the engines' sub-batches back off (`icr.core.oom`); what still does
  not fit stops with a message naming the settings to lower;
* a diverging loss (`TrainingDiverged`, `divergence_guard`) and a training that does not fit
  (`TrainingOutOfMemory`): training stops, nothing is promoted, the message says what to change.

Every fault is a `RunFault` (or `Preempted`); the commands map each type to its own exit code
(`icr.cli.FAULT_EXIT_CODES`, README "Failures and recovery"). The run directory's lock, the
fault of two writers (`RunDirInUse`), is `icr.runtime.runlock`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from icr.core.errors import IcrError

log = logging.getLogger(__name__)


class RunFault(IcrError, RuntimeError):
    """A fault of a long run that stops a command with a message and an exit code of its own."""


class Preempted(BaseException):
    """SIGTERM or SIGINT: the stage stopped between records. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(
            f"stopped by {signal_name}: every finished record is saved; run the same command again to resume"
        )


class RunDirInUse(RunFault):
    """Another process holds the run directory's lock."""


class DiskWriteError(RunFault):
    """A write failed (a full disk, a quota, any OSError); nothing already written is damaged."""


class OutOfMemory(RunFault):
    """Out of memory on a single row (scoring, generation), after backing off."""


class TrainingOutOfMemory(OutOfMemory):
    """Training ran out of memory; no model was saved."""


class TrainingDiverged(RunFault):
    """A NaN, infinite or exploding training loss; no model was promoted."""


# Failed trainings after which the user changes the train settings and resumes: the finished
# trainings of earlier iterations keep theirs (`icr.runtime.rundir.RunDir.is_done`).
SETTINGS_FAULTS = (TrainingDiverged, TrainingOutOfMemory)


# ---------------------------------------------------------------- full disk


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def free_space(path: str | Path) -> str:
    """Free space on the file system holding `path` (its nearest existing ancestor)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{_human(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        return f"free space in {folder} unknown"


def disk_error(path: str | Path, err: BaseException) -> DiskWriteError:
    code = getattr(err, "errno", None)
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}.get(code, str(err))
    return DiskWriteError(
        f"writing {path} failed: {why} ({free_space(path)}). Nothing already written is "
        "damaged: free some space and run the same command again to resume"
    )


def _is_write_failure(err: BaseException) -> bool:
    """An OSError, or safetensors' own error wrapping one (it does not subclass OSError)."""
    return isinstance(err, OSError) or (type(err).__name__ == "SafetensorError" and "Os {" in str(err))


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a failed write of `path` into a `DiskWriteError` naming the file and the free space."""
    try:
        yield
    except DiskWriteError:
        raise
    except Exception as err:
        if not _is_write_failure(err):
            raise
        raise disk_error(path, err) from err


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a write may take fewer bytes than given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_whole(fd: int, path: Path, data: bytes) -> None:
    """Append `data` (one record's line) whole or not at all: after a failed write the file is cut
    back to where it was, so a line is never left half written for the next one to run into."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        write_all(fd, data)
    except OSError as err:
        # cutting needs no free space; if it fails, read_jsonl(repair=True) still cuts the truncated line off
        with suppress(OSError):
            os.ftruncate(fd, start)
        raise disk_error(path, err) from err


# ---------------------------------------------------------------- preemption


class _StopState:
    installed = False
    pending: str | None = None  # the stop signal received
    acknowledged = False  # a Preempted reached a handler of ours: the stop is under way
    depth = 0  # nested write sections


_STOP = _StopState()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    urgent = _STOP.pending is not None  # a second signal: stop now, even inside a write
    _STOP.pending = name
    if _STOP.depth == 0 or urgent:
        raise Preempted(name)


def check_stop() -> None:
    """Raise `Preempted` if a stop signal came and its `Preempted` has not reached a handler: the
    handler's own raise can land where Python ignores exceptions (a `__del__` during garbage
    collection, a weakref callback), so the stop is also acted on at the next write that completes
    a record, between sub-batches (`icr.core.oom.OomBackoff`), after a training step, and when the command ends."""
    if _STOP.installed and _STOP.pending and not _STOP.acknowledged and _STOP.depth == 0:
        raise Preempted(_STOP.pending)


def acknowledge_stop() -> None:
    """Called by the handler of a `Preempted`: the writes it does on its way out must not raise again."""
    _STOP.acknowledged = True


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise `Preempted` at once, or at the end of the write
    in progress. Installed by the commands (not by library calls), in the main thread only."""
    import threading

    if _STOP.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    _STOP.installed, _STOP.pending, _STOP.acknowledged, _STOP.depth = True, None, False, 0
    try:
        yield
        check_stop()  # a signal that arrived inside the last write, or whose raise was ignored: not lost
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _STOP.installed, _STOP.pending = False, None  # a library call after the command is not stopped


@contextmanager
def write_section(completes_record: bool = True) -> Iterator[None]:
    """A write that a stop signal must not cut: the signal is acted on when it ends (or, when the
    write does not complete a record by itself, e.g. a model save before its stage is recorded, at
    the end of the next write that does)."""
    _STOP.depth += 1
    try:
        yield
    finally:
        _STOP.depth -= 1
    if completes_record:
        check_stop()


# ---------------------------------------------------------------- divergence


def divergence_guard(max_loss_ratio: float | None, what: str):
    """A transformers TrainerCallback that raises `TrainingDiverged` when a logged training loss is
    NaN or infinite, or exceeds `max_loss_ratio` × the first logged loss. The logged loss is the
    mean over the processes, so every process stops at the same step. It also acts on a pending
    stop signal after each step (`check_stop`)."""
    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        start: tuple[int, float] | None = None

        def on_step_end(self, args, state, control, **kwargs):
            check_stop()

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            step = state.global_step
            if self.start is None and math.isfinite(loss):
                self.start = (step, loss)
            start = f"starting loss {self.start[1]:.4g} at step {self.start[0]}" if self.start else "no finite loss yet"
            if not math.isfinite(loss):
                reason = f"loss is {loss} at step {step} of {state.max_steps} ({start})"
            elif (
                max_loss_ratio is not None
                and self.start
                and self.start[1] > 0
                and loss > max_loss_ratio * self.start[1]
            ):
                reason = (
                    f"loss {loss:.4g} at step {step} of {state.max_steps} is above train.max_loss_ratio "
                    f"= {max_loss_ratio:g} × the {start}"
                )
            else:
                return
            raise TrainingDiverged(
                f"{what}: training diverged: {reason}. No model was promoted. Change the training settings "
                "(e.g. a lower train.learning_rate) and run the same command again: the run resumes at "
                "this training stage, earlier iterations keep their models"
            )

    return DivergenceGuard()
