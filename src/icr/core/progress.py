"""Progress of long jobs, fit for a terminal and for a job scheduler's log file.

    bar    a tqdm progress bar (the default when stderr is a terminal)
    log    a plain log line every `interval` seconds and at the end (the default otherwise):
           "generate es: 120/1000 prompt (12.0%) | 1.31 prompt/s | ETA 11m12s"
    none   nothing (`icr --quiet`)

Stages report through `progress(total, desc, unit)`; the mode is chosen once per process by the
CLI (`configure`). Training reports its optimizer steps the same way (`trainer_callback`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from icr.core.logs import disable_library_bars

log = logging.getLogger("icr.core.progress")

MODES = ("auto", "bar", "log", "none")


@dataclass
class ProgressSettings:
    mode: str = "auto"
    interval_s: float = 30.0

    def resolved(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "bar" if sys.stderr.isatty() else "log"


SETTINGS = ProgressSettings()


def configure(mode: str = "auto", interval_s: float = 30.0) -> None:
    """Choose how every later `progress` reports (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    SETTINGS.mode, SETTINGS.interval_s = mode, interval_s
    if SETTINGS.resolved() != "bar":  # the libraries' own bars too: one line per event in a log
        disable_library_bars()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(desc: str, done: int, total: int, unit: str, elapsed_s: float) -> str:
    """'desc: done/total unit (pct) | rate unit/s | ETA' (rate over this process's work so far)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    pct = f" ({100 * done / total:.1f}%)" if total else ""
    return f"{desc}: {done}/{total} {unit}{pct} | {rate:.3g} {unit}/s | ETA {format_duration(eta)}"


class LogProgress:
    """Writes `progress_line` through logging at most every `interval_s` seconds, and at the end."""

    def __init__(
        self, total: int, desc: str, unit: str, interval_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.total, self.desc, self.unit, self.interval_s, self.clock = total, desc, unit, interval_s, clock
        self.n = self.logged_n = 0
        self.start = self.last = clock()

    def _line(self, now: float) -> None:
        self.last, self.logged_n = now, self.n
        log.info(progress_line(self.desc, self.n, self.total, self.unit, now - self.start))

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval_s:
            self._line(now)

    def close(self) -> None:
        if self.total and self.n != self.logged_n:  # the last count, unless the last line showed it
            self._line(self.clock())


class NoProgress:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


class BarProgress:
    def __init__(self, total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not total)

    @property
    def n(self) -> int:
        return self.bar.n

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


PROGRESS_MODES: dict[str, Callable[[int, str, str], object]] = {
    "bar": lambda total, desc, unit: BarProgress(total, desc, unit),
    "log": lambda total, desc, unit: LogProgress(total, desc, unit, SETTINGS.interval_s),
    "none": lambda total, desc, unit: NoProgress(),
}


class progress:
    """Report `total` units of work named `desc`, the way `configure` chose."""

    def __init__(self, total: int, desc: str, unit: str = "it"):
        self.reporter = PROGRESS_MODES[SETTINGS.resolved()](total, desc, unit)

    def update(self, n: int = 1) -> None:
        self.reporter.update(n)

    def __enter__(self) -> progress:
        return self

    def __exit__(self, *exc) -> None:
        self.reporter.close()


def trainer_callback(desc: str = "train"):
    """A transformers callback reporting optimizer steps through `progress` (used with
    `disable_tqdm=True`, so a scheduler's log gets lines rather than a redrawn bar)."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        bar: progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = progress(state.max_steps, desc, "step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    return StepProgress()
