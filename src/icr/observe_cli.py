"""`icr plan`, `icr status`, `icr report`: before, during and after a run (attached to the `icr`
group by `icr.cli`). None of them loads a model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from icr.evaluate import DEFAULT_LANGUAGES


@click.command(name="report", context_settings={"max_content_width": 110})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--eval", "eval_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Output folder of `icr eval` for this run, for the leaderboard [default: RUN_DIR/eval if it "
                   "holds results.json].")
@click.option("--output", "output_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for report.md, report.json and the PNGs [default: RUN_DIR/report].")
def report_command(run_dir, eval_dir, output_dir):
    """Markdown + PNG report of a run (finished or not): per iteration and language prompts, pairs
    kept, drops by reason, α, lengths, margin, target-language share; training curves; the
    X-AlpacaEval table when eval results exist."""
    from icr.report import write_run_report

    try:
        path = write_run_report(run_dir, output_dir, eval_dir)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"report: {path}")


@click.command(name="status", context_settings={"max_content_width": 110})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(run_dir, as_json):
    """Where a run stands, per iteration and stage: done, running (records written / expected, rate,
    ETA), interrupted, or not started. Reads only RUN_DIR: safe from another shell while the run goes."""
    from icr.status import format_status, run_status, status_json

    try:
        rows = run_status(run_dir)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(status_json(rows), indent=2) if as_json else format_status(run_dir, rows))


def plan_options(func):
    options = [
        click.option("--tokenizer", default=None, help="Tokenizer to measure prompts with [default: models.policy's]; "
                     "only a tokenizer is loaded."),
        click.option("--processes", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Data-parallel training processes (`accelerate launch --num_processes`)."),
        click.option("--plan-output", default=None, type=click.Path(dir_okay=False),
                     help="Where to write the plan as JSON [default: <output_dir>/<name>/plan.json]."),
        click.option("--eval-prompts", default=None, help="X-AlpacaEval root or prompts folder, to count `icr eval`'s "
                     "judge calls (e.g. ../shared/data/x-alpacaeval)."),
        click.option("--eval-languages", default=",".join(DEFAULT_LANGUAGES), show_default=True,
                     help="Languages `icr eval` would judge."),
        click.option("--eval-models", default=None, type=click.IntRange(min=1),
                     help="Models evaluated [default: iterations + 1, i.e. π^0 … π^T as `icr eval --run-dir`]."),
        click.option("--eval-limit", default=None, type=click.IntRange(min=1), help="As `icr eval --limit`."),
        click.option("--eval-max-new-tokens", default=2048, show_default=True, type=click.IntRange(min=1),
                     help="As `icr eval --max-new-tokens`."),
        click.option("--judge-order", type=click.Choice(["random", "both"]), default="random", show_default=True,
                     help="As `icr eval --judge-order` (both = twice the calls)."),
        click.option("--price-input", default=10.0, show_default=True, type=click.FloatRange(min=0),
                     help="Judge price per million input tokens (default: gpt-4-1106-preview's list price, USD)."),
        click.option("--price-output", default=30.0, show_default=True, type=click.FloatRange(min=0),
                     help="Judge price per million output tokens (USD)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _plan_command():
    from icr.cli import config_options, resolve_config

    @click.command(name="plan", context_settings={"max_content_width": 110})
    @plan_options
    @config_options
    def plan_command(config_path, tokenizer, processes, plan_output, eval_prompts, eval_languages, eval_models,
                     eval_limit, eval_max_new_tokens, judge_order, price_input, price_output, **options):
        """Before a run, without loading a model: prompts × languages × N, upper bounds on tokens to
        generate and score, training steps, disk, a time estimate from the latest benchmark results
        for the same kind of device, and `icr eval`'s judge calls and cost. Prints it and writes JSON."""
        from icr.data import DataError, write_json_atomic
        from icr.plan import EvalPlanOptions, PlanError, format_plan, make_plan

        config = resolve_config(config_path, options)
        eval_options = EvalPlanOptions(
            prompts=eval_prompts, languages=tuple(x.strip() for x in eval_languages.split(",") if x.strip()),
            models=eval_models, limit=eval_limit, max_new_tokens=eval_max_new_tokens, order=judge_order,
            price_input_per_million=price_input, price_output_per_million=price_output)
        try:
            plan = make_plan(config, tokenizer, processes, eval_options)
        except (PlanError, DataError) as err:
            raise click.ClickException(str(err)) from None
        path = Path(plan_output) if plan_output else config.run_dir / "plan.json"
        write_json_atomic(path, plan)
        click.echo(format_plan(plan))
        click.echo(f"\nplan written to {path}")

    return plan_command
