"""What a stage is: a name, the config sections its outputs depend on, its inputs and outputs in
the run directory, and a driver that reads the inputs, calls an engine and writes the outputs.
Every stage, when it starts, writes its status file (`icr.runtime.status`), which `icr status` reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icr.core.errors import DataError
from icr.core.prompts import PromptSet
from icr.runtime.rundir import ModelPool, RunDir
from icr.runtime.status import stage_started


@dataclass(frozen=True)
class StageContext:
    """What a stage driver works with: the run, the iteration t, the shared models and the prompts."""

    run: RunDir
    t: int
    pool: ModelPool
    prompts: PromptSet

    @property
    def config(self):
        """The config of iteration t: the run config with its `iteration_overrides` for t applied."""
        return self.run.config.at_iteration(self.t)


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str  # one line: the command's help
    sections: tuple[str, ...]  # config sections whose change invalidates the stage's outputs
    inputs: Callable[[RunDir, int], list[Path]]  # files of iteration t the stage reads
    outputs: Callable[[RunDir, int], list[Path]]  # files or folders of iteration t it writes
    run: Callable[[StageContext], dict[str, Any]]  # does the work; returns what the manifest records
    unit: str = ""  # what `icr status` counts: a prompt's record, an optimizer step
    expected: Callable[[StageContext], int | None] = lambda ctx: None  # units the stage produces
    counts_records: bool = False  # its .jsonl outputs hold one record per unit (status counts their lines)

    def execute(self, ctx: StageContext) -> dict[str, Any]:
        """Run the driver, after writing the stage's status file for `icr status` (`icr.runtime.status`).
        A missing input is an error naming it, before any model loads."""
        run = ctx.run
        missing = [p for p in self.inputs(run, ctx.t) if not p.exists()]
        if missing:
            raise DataError(
                f"stage {self.name} of iteration {ctx.t} needs {', '.join(map(str, missing))}: "
                "run the stages before it (icr run resumes them), or restore the files"
            )
        if run.shard.is_main:
            counted = [p for p in self.outputs(run, ctx.t) if p.suffix == ".jsonl"] if self.counts_records else []
            stage_started(run.root, ctx.t, self.name, run.config.iterations, self.expected(ctx), self.unit, counted)
        return self.run(ctx)


def language_files(folder: Callable[[RunDir, int], Path]) -> Callable[[RunDir, int], list[Path]]:
    """The {lang}.jsonl files of one folder of iteration t, for the run's languages."""
    return lambda run, t: [folder(run, t) / f"{lang}.jsonl" for lang in run.config.data.languages]
