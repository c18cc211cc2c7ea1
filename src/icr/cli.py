"""The `icr` command line: a thin layer over `icr.pipeline` and the stage modules.

Every config field is also a flag named by its dotted path (`--generate.n 4`,
`--reward.mode multilingual`, `--data.languages en,es`); flags override the YAML file given with
`--config`. Values are read as YAML scalars (`true`, `null`, `1e-6`), lists also as `a,b,c`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import click
import yaml

from icr.config import ConfigError, RunConfig, dump_config, iter_fields, load_config


def _option_name(dotted: str) -> str:
    return dotted.replace(".", "__")


def _accepted_types(annotation) -> tuple:
    """The types a field accepts: (list[str],) for a list, (str, NoneType) for `str | None`, ..."""
    if get_origin(annotation) is list:
        return (annotation,)
    return get_args(annotation) or (annotation,)


def config_options(func):
    """Add `--config` and one `--section.field` option per config field (help from the field)."""
    for dotted, info, annotation in reversed(list(iter_fields(RunConfig))):
        default = info.default if info.default_factory is None else info.default_factory()
        help_text = f"{info.description or ''} [default: {default!r}]"
        func = click.option(f"--{dotted}", _option_name(dotted), default=None, metavar="VALUE",
                            help=help_text)(func)
    func = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                        help="YAML run config; flags override it.")(func)
    return func


def _parse_value(raw: str, annotation) -> Any:
    """A flag's text as the field's value. Strings are taken verbatim (templates, ids, 'no' the
    Norwegian code); lists are 'a,b' or '[a, b]'; other values are YAML scalars ('true', '1e-6')."""
    accepted = _accepted_types(annotation)
    is_list = any(get_origin(t) is list for t in accepted)
    if type(None) in accepted and raw.strip().lower() in ("null", "none", "~"):
        return None
    if is_list:
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        elif str in accepted and "," not in text:
            return raw  # e.g. LoRA's 'all-linear' shorthand, which PEFT only expands as a string
        return [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
    if str in accepted:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise click.UsageError(f"cannot read {raw!r}: {err}") from None


def resolve_config(config_path: str | None, options: dict[str, Any]) -> RunConfig:
    """Build and validate the run config from the YAML file and the dotted flags (no model loads)."""
    types = {_option_name(d): (d, ann) for d, _, ann in iter_fields(RunConfig)}
    overrides = {}
    for key, raw in options.items():
        if raw is not None and key in types:
            dotted, annotation = types[key]
            overrides[dotted] = _parse_value(raw, annotation)
    try:
        return load_config(config_path, overrides)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only: no progress bars, no progress lines.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "bar", "log", "none"]), default="auto",
              show_default=True, help="How long jobs report: bar = progress bars, log = a plain line (stage, "
              "done/total, rate, ETA) every --log-every seconds, none; auto = bars on a terminal, lines otherwise.")
@click.option("--log-every", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between progress lines in log mode.")
def main(verbose: bool, quiet: bool, progress_mode: str, log_every: float) -> None:
    """Implicit Cross-lingual Rewarding: turn an English DPO model into multilingual preference
    pairs and train on them. See README.md and docs/cli.md."""
    from icr.progress import configure

    _setup_logging(verbose, quiet)
    configure("none" if quiet else progress_mode, log_every)


def _stage_command(stage: str, summary: str):
    @main.command(name=stage, help=summary)
    @click.option("--iteration", default=0, show_default=True, type=int, help="Iteration t of the run.")
    @config_options
    def command(config_path, iteration, **options):
        from icr.pipeline import run_stage

        config = resolve_config(config_path, options)
        run = run_stage(config, stage, iteration)
        click.echo(f"{stage} of iteration {iteration} finished: {run.root / f'iter_{iteration}'}")

    return command


_stage_command("generate", "Stage 1: sample generate.n responses per prompt and language from π^t.")
_stage_command("reward", "Stage 2: score every response with the implicit reward β·log π^t/π_ref.")
_stage_command("pairs", "Stage 3: pick chosen/rejected per prompt with length control; write pairs.jsonl.")
_stage_command("train", "Stage 4: DPO + λ·NLL on the pairs, from π^t to π^{t+1}.")


@main.command(name="run")
@config_options
def run_command(config_path, **options):
    """All iterations: generate → reward → pairs → train, T times; resumes after any interruption."""
    from icr.pipeline import run_iterations

    config = resolve_config(config_path, options)
    run = run_iterations(config)
    if run.shard.is_main:  # under `accelerate launch`, the main process writes and prints the summary
        from icr.report import write_run_report

        click.echo((run.root / "summary.md").read_text())
        click.echo(f"run finished: {run.root}; report: {write_run_report(run.root)}")


@main.command(name="config")
@config_options
def config_command(config_path, **options):
    """Print the resolved config (defaults + YAML + flags) as YAML, after validating it."""
    click.echo(dump_config(resolve_config(config_path, options)), nl=False)


@main.command(name="align-english")
@click.option("--model", "model_spec", required=True, help="Reference/SFT model to align (Hub id, folder, .gguf).")
@click.option("--data", "data_source", required=True,
              help="English preference data in TRL's format: a .jsonl/.json file or a Hub dataset id "
                   "(fields prompt, chosen, rejected; strings or messages); 'embedded:demo' for the demo set.")
@click.option("--split", default="train", show_default=True, help="Rows whose 'split' field (if any) match.")
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@config_options
def align_english_command(model_spec, data_source, split, output_dir, config_path, **options):
    """Stage 0: English DPO turning a reference/SFT model into π_dpo (uses the train.* settings)."""
    from icr.align import align_english

    config = resolve_config(config_path, options)
    metrics = align_english(model_spec, data_source, Path(output_dir), config.train, split=split,
                            device=config.models.device)
    click.echo(f"π_dpo written to {output_dir} ({metrics['pairs']} pairs, {metrics['steps']} steps)")


@main.command(name="reward-accuracy")
@click.option("--pairs", "pairs_source", required=True,
              help="Folder of {lang}.jsonl or one .jsonl file with prompt, prompt_en, chosen, rejected, lang.")
@click.option("--policy", required=True, help="π_dpo (the DPO model).")
@click.option("--reference", required=True, help="π_ref (its reference).")
@click.option("--modes", default="crosslingual,multilingual", show_default=True,
              help="Comma-separated rewarding modes: crosslingual, multilingual, translate.")
@click.option("--translator", default=None, help="Model for translate mode (default: the reference).")
@click.option("--beta", default=0.1, show_default=True, type=float, help="β (only rescales).")
@click.option("--output", "output", default=None, type=click.Path(dir_okay=False), help="Write the table as JSON.")
def reward_accuracy_command(pairs_source, policy, reference, modes, translator, beta, output):
    """Accuracy of the implicit reward on held-out preference pairs, per language and mode
    (Wilson 95% interval): the measurement behind the paper's Figure 3."""
    from icr.accuracy import format_accuracy_table, load_preference_pairs, reward_accuracy_table
    from icr.config import RewardConfig
    from icr.data import write_json_atomic
    from icr.models import load_model

    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    try:
        configs = {m: RewardConfig(mode=m, beta=beta) for m in mode_list}
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    pairs = load_preference_pairs(pairs_source)
    pol, ref = load_model(policy), load_model(reference)
    trans = load_model(translator) if translator else ref
    table = reward_accuracy_table(pol, ref, pairs, configs, translator=trans)
    click.echo(format_accuracy_table(table))
    if output:
        write_json_atomic(output, table)


@main.command(name="demo")
@click.option("--quick", is_flag=True, help="Reduced size (a few minutes on a 2-core CPU); what CI runs.")
@click.option("--output", "output_dir", default="demo-output", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's runs, models and report.")
def demo_command(quick, output_dir):
    """The whole method offline on SmolLM2-135M-Instruct: English DPO (stage 0), 2 ICR iterations,
    reward accuracy in 5 languages, and a Markdown report with plots."""
    from icr.demo import run_demo

    report = run_demo(Path(output_dir), quick=quick)
    click.echo(f"report: {report}")


from icr.eval_cli import eval_command  # noqa: E402  (after `main`, which it does not need)

main.add_command(eval_command, name="eval")

from icr.observe_cli import _plan_command, report_command, status_command  # noqa: E402

main.add_command(_plan_command(), name="plan")
main.add_command(status_command, name="status")
main.add_command(report_command, name="report")


if __name__ == "__main__":
    sys.exit(main())
