"""What a stage is: a name, the config sections its outputs depend on, its inputs and outputs in
the run directory, and a driver that reads the inputs, calls an engine and writes the outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icr.data import PromptSet
from icr.rundir import ModelPool, RunDir


@dataclass(frozen=True)
class StageContext:
    """What a stage driver works with: the run, the iteration t, the shared models and the prompts."""

    run: RunDir
    t: int
    pool: ModelPool
    prompts: PromptSet


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str  # one line: the command's help
    sections: tuple[str, ...]  # config sections whose change invalidates the stage's outputs
    inputs: Callable[[RunDir, int], list[Path]]  # files of iteration t the stage reads
    outputs: Callable[[RunDir, int], list[Path]]  # files or folders of iteration t it writes
    run: Callable[[StageContext], dict[str, Any]]  # does the work; returns what the manifest records


def language_files(folder: Callable[[RunDir, int], Path]) -> Callable[[RunDir, int], list[Path]]:
    """The {lang}.jsonl files of one folder of iteration t, for the run's languages."""
    return lambda run, t: [folder(run, t) / f"{lang}.jsonl" for lang in run.config.data.languages]
