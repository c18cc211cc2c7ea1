"""The `icr` command line: a thin layer over `icr.pipeline`, `icr.stages` and the commands.

Each command's options are generated from its config model (`icr.cli.options`); every command
runs with the stop signals handled (`icr.core.faults.stop_on_signals`) and turns the project's errors
into one clean line: exit code 2 for a config error, the code of `FAULT_EXIT_CODES` for a fault of
a long run, 1 for the others.
"""

from __future__ import annotations

import logging
import sys

import click

from icr.cli.options import config_options, resolve
from icr.config import RunConfig, dump_config
from icr.core.errors import ConfigError, IcrError
from icr.core.faults import (
    DiskWriteError,
    OutOfMemory,
    Preempted,
    RunDirInUse,
    TrainingDiverged,
    acknowledge_stop,
    stop_on_signals,
)
from icr.core.logs import configure_logging
from icr.core.progress import MODES, SETTINGS, configure
from icr.stages import STAGES

# The faults of long runs (README: Failures and recovery): exception type -> (exit code, meaning).
# 75 is sysexits' EX_TEMPFAIL, "try again later", which requeue scripts test for.
FAULT_EXIT_CODES: dict[type[BaseException], tuple[int, str]] = {
    RunDirInUse: (3, "run directory in use by another process"),
    DiskWriteError: (4, "a write failed (disk full)"),
    OutOfMemory: (5, "out of memory"),
    TrainingDiverged: (6, "training diverged"),
    Preempted: (75, "stopped by SIGTERM/SIGINT"),
}


def fault_exit_code(err: BaseException) -> int:
    """The exit code of a fault: that of the nearest of its classes in `FAULT_EXIT_CODES`."""
    return next(FAULT_EXIT_CODES[cls][0] for cls in type(err).__mro__ if cls in FAULT_EXIT_CODES)


class FaultExit(click.ClickException):
    """A fault's message on stderr, and its exit code."""

    def __init__(self, err: BaseException):
        self.exit_code = fault_exit_code(err)
        super().__init__(f"{err} [exit code {self.exit_code}]")


HELP_OPTIONS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class IcrCommand(click.Command):
    """A command that reports the project's errors as a message and an exit code, not a traceback."""

    def __init__(self, *args, **kwargs):
        # click builds a command's help option once and keeps it: a command first invoked on its own
        # (not through `icr`) would otherwise keep click's bare --help
        kwargs["context_settings"] = {**HELP_OPTIONS, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            with stop_on_signals():
                return super().invoke(ctx)
        except ConfigError as err:
            raise click.UsageError(str(err), ctx) from None
        except tuple(FAULT_EXIT_CODES) as err:
            acknowledge_stop()  # a signal's stop is under way: writing the message must not raise again
            raise FaultExit(err) from None
        except IcrError as err:
            raise click.ClickException(str(err)) from None


# `icr --help` lists the commands in these groups, in this order (any other under "Other").
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "Run": ("run", "config", "plan", "demo"),
    "Stage": ("align-english", "generate", "reward", "pairs", "train"),
    "Evaluate": ("eval", "reward-accuracy", "score"),
    "Inspect": ("status", "report", "export", "cache"),
}


class IcrGroup(click.Group):
    command_class = IcrCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        grouped = [name for names in COMMAND_GROUPS.values() for name in names if name in self.commands]
        return grouped + sorted(set(self.commands) - set(grouped))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """One section per group of `COMMAND_GROUPS`, each command with its short help."""
        listed = self.list_commands(ctx)
        grouped = {name for names in COMMAND_GROUPS.values() for name in names}
        groups = {**COMMAND_GROUPS, "Other": tuple(n for n in listed if n not in grouped)}
        limit = formatter.width - 6 - max(len(name) for name in listed)
        for title, names in groups.items():
            rows = [(n, self.commands[n].get_short_help_str(limit)) for n in names if n in self.commands]
            if rows:
                with formatter.section(f"{title} commands"):
                    formatter.write_dl(rows)


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    """rich's console handler only beside progress bars on a terminal; plain unwrapped lines else
    (`icr.core.logs`). Python warnings go to the run's log file, and to the console with -v."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    rich = SETTINGS.resolved() == "bar" and sys.stderr.isatty()
    configure_logging(level, rich, show_warnings=verbose)


MAIN_HELP = (
    "Implicit Cross-lingual Rewarding: turn an English DPO model into multilingual preference pairs and train "
    "on them. See README.md and docs/cli.md.\n\nExit codes: 0 done; 1 error; 2 bad usage or config; "
    + "; ".join(f"{code} {meaning}" for code, meaning in FAULT_EXIT_CODES.values())
    + ". The same command resumes the run after 75, after 4 once there is space, after 5 or 6 once the "
    "settings the message names are changed (README: Failures and recovery)."
)


@click.group(cls=IcrGroup, help=MAIN_HELP, context_settings=HELP_OPTIONS)
@click.version_option(package_name="icr", message="icr %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only: no progress bars, no progress lines.")
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    help="How long jobs report: bar = progress bars, log = a plain line (stage, done/total, rate, ETA) "
    "every --log-every seconds, none; auto = bars on a terminal, lines otherwise.",
)
@click.option(
    "--log-every",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    metavar="FLOAT",
    help="Seconds between progress lines in log mode.",
)
def main(verbose: bool, quiet: bool, progress_mode: str, log_every: float) -> None:
    configure("none" if quiet else progress_mode, log_every)
    _setup_logging(verbose, quiet)


SHARED_OPTIONS_NOTE = (
    "Shows this stage's own options. Every option of `icr run` is accepted too (--name, --output_dir, "
    "--seed, --models.*, --data.* and the other stages' sections): see `icr run --help`."
)


def _stage_command(name: str, summary: str) -> None:
    @main.command(name=name, help=summary, epilog=SHARED_OPTIONS_NOTE)
    @click.option("--iteration", default=0, show_default=True, type=int, help="Iteration t of the run.")
    @config_options(RunConfig, shown=(name,))
    def command(config_path, iteration, **options):
        from icr.pipeline import run_stage

        run = run_stage(resolve(RunConfig, config_path, options), name, iteration)
        click.echo(f"{name} of iteration {iteration} finished: {run.iter_dir(iteration)}")


for _stage in STAGES.values():
    _stage_command(_stage.name, _stage.summary)


@main.command(name="run")
@config_options(RunConfig)
def run_command(config_path, **options):
    """All iterations: generate → reward → pairs → train, T times; resumes after any interruption."""
    from icr.pipeline import run_iterations

    run = run_iterations(resolve(RunConfig, config_path, options))
    if run.shard.is_main:  # under `accelerate launch`, the main process writes and prints the summary
        from icr.observe.report import write_run_report

        click.echo((run.root / "summary.md").read_text())
        click.echo(f"run finished: {run.root}; report: {write_run_report(run.root)}")


@main.command(name="config")
@config_options(RunConfig)
def config_command(config_path, **options):
    """Print the resolved config (defaults + YAML + flags) as YAML, after validating it and checking
    that its models and prompt sources exist (`icr.runtime.preflight.check_sources`)."""
    from icr.runtime.preflight import check_sources

    config = resolve(RunConfig, config_path, options)
    check_sources(config)
    click.echo(dump_config(config), nl=False)


from icr.cli import commands, observe  # noqa: E402,F401  (register the other commands on `main`)
