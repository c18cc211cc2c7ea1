"""Before, during and after a run, without loading a model: `icr plan`, `icr status`, `icr report`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from icr.cli import main
from icr.cli.options import config_options, resolve
from icr.config import PlanConfig, RunConfig


@main.command(name="plan")
@config_options(PlanConfig, config_file=False)
@config_options(RunConfig)
def plan_command(config_path, **options):
    """Before a run, without loading a model: prompts × languages × N, upper bounds on tokens to
    generate and score, training steps, disk, a time estimate from the latest benchmark results
    for the same kind of device, and `icr eval`'s judge calls and cost. Prints it and writes JSON."""
    from icr.core.io import write_json_atomic
    from icr.observe.plan import make_plan
    from icr.observe.plan_text import format_plan

    config, plan_config = resolve(RunConfig, config_path, options), resolve(PlanConfig, None, options)
    plan = make_plan(config, plan_config)
    path = Path(plan_config.output) if plan_config.output else config.run_dir / "plan.json"
    write_json_atomic(path, plan)
    click.echo(format_plan(plan))
    click.echo(f"\nplan written to {path}")


@main.command(name="status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(run_dir, as_json):
    """Where a run stands, per iteration and stage: done, running (records written / expected, rate,
    ETA), interrupted, or not started. Reads only RUN_DIR: safe from another shell while the run goes."""
    from icr.observe.status import format_status, run_status, status_json
    from icr.stages import STAGES

    rows = run_status(run_dir, list(STAGES))
    click.echo(json.dumps(status_json(rows), indent=2) if as_json else format_status(run_dir, rows))


@main.command(name="report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--eval",
    "eval_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Output folder of `icr eval` for this run, for the leaderboard [default: RUN_DIR/eval if it "
    "holds results.json].",
)
@click.option(
    "--output",
    "output_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder for report.md, report.json and the PNGs [default: RUN_DIR/report].",
)
def report_command(run_dir, eval_dir, output_dir):
    """Markdown + PNG report of a run (finished or not): per iteration and language prompts, pairs
    kept, drops by reason, α, lengths, margin, target-language share; training curves; the
    X-AlpacaEval table when eval results exist."""
    from icr.observe.report import write_run_report

    click.echo(f"report: {write_run_report(run_dir, output_dir, eval_dir)}")
