"""The commands beside the run: align-english, reward-accuracy, score, export, eval, demo and cache."""

from __future__ import annotations

from pathlib import Path

import click

from icr.cli import main
from icr.cli.options import config_options, resolve
from icr.config import AccuracyConfig, AlignConfig, EvalConfig, ExportConfig, ScoreConfig


@main.command(name="align-english")
@config_options(AlignConfig)
def align_english_command(config_path, **options):
    """Stage 0: English DPO turning a reference/SFT model into π_dpo (uses the train.* settings)."""
    from icr.align import align_english

    config = resolve(AlignConfig, config_path, options)
    metrics = align_english(config)
    click.echo(f"π_dpo written to {config.output} ({metrics['pairs']} pairs, {metrics['steps']} steps)")


@main.command(name="reward-accuracy")
@config_options(AccuracyConfig)
def reward_accuracy_command(config_path, **options):
    """Accuracy of the implicit reward on held-out preference pairs, per language and mode
    (Wilson 95% interval): the measurement behind the paper's Figure 3."""
    from icr.accuracy import format_accuracy_table, load_preference_pairs, reward_accuracy_table
    from icr.core.io import write_json_atomic
    from icr.score import load_scoring_models

    config = resolve(AccuracyConfig, config_path, options)
    pairs = load_preference_pairs(config.pairs)
    policy, reference, translator = load_scoring_models(config.models, needs_translator=True)
    table = reward_accuracy_table(policy, reference, pairs, config, translator)
    click.echo(format_accuracy_table(table))
    if config.output:
        write_json_atomic(config.output, table)


@main.command(name="score")
@config_options(ScoreConfig)
def score_command(config_path, **options):
    """log π, log π_ref and the implicit reward β·log π/π_ref of every response of a preference
    (prompt, chosen, rejected) or completion (prompt, completion) dataset, in TRL's format, with the
    run's scorer; resumable and sharded like every job. See docs/hub.md."""
    from icr.score import score_file

    config = resolve(ScoreConfig, config_path, options)
    records = score_file(config)
    click.echo(f"{len(records)} rows scored ({config.mode}): {config.output}")


@main.command(name="export")
@click.argument("run_folder", required=False, metavar="RUN_DIR")
@config_options(ExportConfig)
def export_command(run_folder, config_path, **options):
    """A run's pairs, generations or rewards of one iteration as a Hugging Face dataset folder (one
    config per language, a dataset card), or its trained model with a model card; optionally pushed
    to the Hub. See docs/hub.md."""
    from icr.export import export

    if run_folder is not None:
        options["run_dir"] = run_folder
    folder, url = export(resolve(ExportConfig, config_path, options))
    click.echo(f"exported to {folder}" + (f"; pushed: {url}" if url else ""))


@main.command(name="eval")
@config_options(EvalConfig)
def eval_command(config_path, **options):
    """X-AlpacaEval: answer the instructions of each language with every model (paper decoding),
    judge each output against the reference output pairwise, and write the leaderboard (LC and WR
    per language and on average) as Markdown, CSV and PNG. See docs/eval.md."""
    from icr.core.distributed import current_shard
    from icr.eval.outputs import eval_models
    from icr.eval.run import evaluate

    config = resolve(EvalConfig, config_path, options)
    models = eval_models(config)
    if not models:
        raise click.UsageError("nothing to evaluate: give --model, --run-dir or --outputs")
    table = evaluate(config, models)
    if not current_shard().is_main:  # under `accelerate launch`: the main process judges and reports
        return
    if config.estimate_only:
        click.echo("estimate only: no judgement requested (see the log line above)")
        return
    board = (Path(config.output) / "leaderboard.md").read_text(encoding="utf-8")
    click.echo(board.split("\n## Details")[0])
    click.echo(f"{len(table)} results written to {config.output} (leaderboard.md, leaderboard.csv, leaderboard.png)")


@main.command(name="demo")
@click.option(
    "--quick",
    is_flag=True,
    help="Reduced size (measured: 73 s on a 2-core CPU, the embedded model already converted); what CI runs.",
)
@click.option(
    "--output",
    "output_dir",
    default="demo-output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the demo's runs, models and report.",
)
def demo_command(quick, output_dir):
    """The whole method offline on SmolLM2-135M-Instruct: English DPO (stage 0), 2 ICR iterations,
    reward accuracy in 5 languages, and a Markdown report with plots."""
    from icr.demo.run import run_demo

    report = run_demo(Path(output_dir), quick=quick)
    click.echo(f"report: {report}")


@main.group(name="cache")
def cache_group():
    """icr's own cache ($ICR_CACHE, else $XDG_CACHE_HOME/icr, else ~/.cache/icr): the dequantized
    GGUF models (gguf/, one per file content) and the judgements (judgements/)."""


@cache_group.command(name="list")
def cache_list_command():
    """Each entry of the cache with its size."""
    from icr.core.models import cache_root

    root = cache_root()
    entries = sorted(p for kind in ("gguf", "judgements") for p in (root / kind).glob("*"))
    for path in entries:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        click.echo(f"{size / 2**20:10.1f} MiB  {path}")
    click.echo(f"{len(entries)} entries in {root}")


@cache_group.command(name="clear")
@click.option("--what", type=click.Choice(["gguf", "judgements", "all"]), default="gguf", show_default=True)
def cache_clear_command(what):
    """Remove cached GGUF conversions (made again on next use) or judgements (paid for again)."""
    import shutil

    from icr.core.models import cache_root

    kinds = ("gguf", "judgements") if what == "all" else (what,)
    for kind in kinds:
        shutil.rmtree(cache_root() / kind, ignore_errors=True)
    click.echo(f"cleared {', '.join(kinds)} in {cache_root()}")
