"""Where log records go: the console, and the run's own log file.

    console    a terminal with progress bars: rich's handler (time, level, wrapped to the width);
               otherwise (a scheduler's log, a pipe, `--progress log`) one plain line per record,
               never wrapped: "2026-12-05 12:00:00 INFO generate es: 12/96 prompt (12.5%) | ..."
    run log    `<run_dir>/icr.log` while a command writes a run (`run_log_file`): every record of
               the console at INFO and above, plus the warnings libraries raise through `warnings`
               (transformers' FutureWarnings and the like), which the console leaves out.

Python warnings become log records of the `py.warnings` logger (`logging.captureWarnings`); the
console shows them only with `--verbose`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WARNINGS_LOGGER = "py.warnings"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
NOISY_LOGGERS = ("httpx", "urllib3", "datasets", "filelock")


class OneLine(logging.Formatter):
    """The plain console format on one line: a multi-line message's lines joined with ' | '."""

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(line for line in super().format(record).splitlines() if line.strip())


class NotWarnings(logging.Filter):
    """Leaves out the records of captured Python warnings (they go to the run's log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != WARNINGS_LOGGER


def console_handler(rich: bool) -> logging.Handler:
    """rich's handler on a terminal with bars; a plain, unwrapped, one-line-per-record one otherwise."""
    if rich:
        from rich.logging import RichHandler

        return RichHandler(show_path=False, rich_tracebacks=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine(PLAIN_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    return handler


def configure_logging(level: int, rich: bool, show_warnings: bool = False) -> None:
    """The root logger for one command: `level` on the console (see the module docstring)."""
    handler = console_handler(rich)
    handler.setLevel(level)
    if not show_warnings:
        handler.addFilter(NotWarnings())
    # the root passes INFO on even under --quiet: the run's log file keeps it
    logging.basicConfig(level=min(level, logging.INFO), format="%(message)s", handlers=[handler], force=True)
    logging.captureWarnings(True)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def disable_library_bars() -> None:
    """Turn off the progress bars of huggingface_hub, datasets, transformers and of plain tqdm
    (transformers' GGUF conversion uses it directly). The environment variables cover the
    libraries not imported yet; the ones already imported are told directly."""
    for variable in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        os.environ.setdefault(variable, "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        from datasets.utils import disable_progress_bars as disable_datasets_bars

        disable_datasets_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


@contextmanager
def run_log_file(path: str | Path) -> Iterator[Path]:
    """Append every record (INFO and above, captured warnings included) to `path` while inside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
