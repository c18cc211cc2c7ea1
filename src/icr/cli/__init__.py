"""The `icr` command line: a thin layer over `icr.pipeline`, `icr.stages` and the commands.

Each command's options are generated from its config model (`icr.cli.options`); every command
turns the project's errors into one clean line: exit code 2 for a config error, 1 for the others.
"""

from __future__ import annotations

import logging

import click

from icr.cli.options import config_options, resolve
from icr.config import RunConfig, dump_config
from icr.errors import ConfigError, IcrError
from icr.progress import MODES, configure
from icr.stages import STAGES


class IcrCommand(click.Command):
    """A command that reports the project's errors as a message and an exit code, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            raise click.UsageError(str(err), ctx) from None
        except IcrError as err:
            raise click.ClickException(str(err)) from None


class IcrGroup(click.Group):
    command_class = IcrCommand


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(cls=IcrGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only: no progress bars, no progress lines.")
@click.option("--progress", "progress_mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="How long jobs report: bar = progress bars, log = a plain line (stage, done/total, rate, ETA) "
              "every --log-every seconds, none; auto = bars on a terminal, lines otherwise.")
@click.option("--log-every", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between progress lines in log mode.")
def main(verbose: bool, quiet: bool, progress_mode: str, log_every: float) -> None:
    """Implicit Cross-lingual Rewarding: turn an English DPO model into multilingual preference
    pairs and train on them. See README.md and docs/cli.md."""
    _setup_logging(verbose, quiet)
    configure("none" if quiet else progress_mode, log_every)


def _stage_command(name: str, summary: str) -> None:
    @main.command(name=name, help=summary)
    @click.option("--iteration", default=0, show_default=True, type=int, help="Iteration t of the run.")
    @config_options(RunConfig)
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
        from icr.report import write_run_report

        click.echo((run.root / "summary.md").read_text())
        click.echo(f"run finished: {run.root}; report: {write_run_report(run.root)}")


@main.command(name="config")
@config_options(RunConfig)
def config_command(config_path, **options):
    """Print the resolved config (defaults + YAML + flags) as YAML, after validating it."""
    click.echo(dump_config(resolve(RunConfig, config_path, options)), nl=False)


from icr.cli import commands, observe  # noqa: E402,F401  (register the other commands on `main`)
