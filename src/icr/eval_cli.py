"""`icr eval`: answer X-AlpacaEval with one or more models, judge against a reference, build the
leaderboard (attached to the `icr` group by `icr.cli`). See docs/eval.md."""

from __future__ import annotations

from pathlib import Path

import click

from icr.evaluate import DEFAULT_LANGUAGES, Decoding, EvalModel, parse_model_option, run_dir_models
from icr.judges import DEFAULT_JUDGE, JUDGES


def _split_pair(value: str, what: str) -> tuple[str, str]:
    name, sep, target = value.partition("=")
    if not sep or not name or not target:
        raise click.BadParameter(f"{value!r}: expected NAME=FOLDER", param_hint=what)
    return name, target


def _default_cache() -> str:
    from icr.models import cache_root

    return str(cache_root() / "judgements")


@click.command(name="eval", context_settings={"max_content_width": 110})
@click.option("--model", "model_options", multiple=True, metavar="[NAME=]SPEC",
              help="A model to evaluate (Hub id, folder, .gguf, embedded:...), optionally named NAME in the "
                   "table; repeatable. Rows: --run-dir models, then --model, then --outputs, in the order given.")
@click.option("--run-dir", type=click.Path(exists=True, file_okay=False),
              help="An ICR run folder: adds pi0 (models.policy of its config.yaml) and pi1, pi2, ... "
                   "(iter_0/model, iter_1/model, ...) as rows.")
@click.option("--outputs", "outputs_options", multiple=True, metavar="NAME=FOLDER",
              help="Existing outputs to judge instead of generating: FOLDER holds {lang}.json or "
                   "{lang}/model_outputs.json in alpaca_eval's format; repeatable.")
@click.option("--languages", default=",".join(DEFAULT_LANGUAGES), show_default=True,
              help="Comma-separated ISO 639-1 codes (the table's column order).")
@click.option("--prompts", required=True,
              help="X-AlpacaEval instructions: a folder (or Hub dataset id) with {lang}.json, or the benchmark "
                   "root holding prompts/ and reference/ (e.g. ../shared/data/x-alpacaeval).")
@click.option("--reference-outputs", default=None,
              help="Folder or Hub dataset id with the reference's {lang}.json (alpaca_eval format) "
                   "[default: <prompts root>/reference/gpt-4-turbo-2024-04-09].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N instructions of each language (LC is then marked as a subset).")
@click.option("--judge", type=click.Choice(list(JUDGES)), default=DEFAULT_JUDGE, show_default=True,
              help="Judge: alpaca_eval = the paper's (alpaca_eval's weighted_alpaca_eval_gpt4_turbo annotator from "
                   "the installed package, plus the paper's language sentence, on an OpenAI-compatible endpoint); "
                   "openai = our own A/B prompt on such an endpoint, hf = that prompt on a local model (offline). "
                   "openai and hf numbers are NOT comparable with the paper's Table 2.")
@click.option("--judge-model", default=None,
              help="Judge model [default: gpt-4-1106-preview for alpaca_eval (its annotator config) and openai, "
                   "embedded:smollm2-135m-instruct for hf (a smoke-test judge only)].")
@click.option("--judge-base-url", default=None,
              help="OpenAI-compatible base URL [default: $OPENAI_BASE_URL, else https://api.openai.com/v1].")
@click.option("--judge-api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Name of the environment variable holding the API key (the key itself is never "
                   "accepted on the command line nor written anywhere).")
@click.option("--judge-concurrency", default=8, show_default=True, type=click.IntRange(min=1),
              help="Parallel requests to the endpoint.")
@click.option("--judge-rpm", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Max requests per minute (0 = no limit).")
@click.option("--judge-max-retries", default=6, show_default=True, type=click.IntRange(min=0),
              help="Retries of a request after a rate limit, server error or network fault (exponential backoff).")
@click.option("--judge-timeout", default=120.0, show_default=True, type=float, help="Seconds per request.")
@click.option("--judge-order", type=click.Choice(["random", "both"]), default="random", show_default=True,
              help="random: one judgement per pair, order drawn per instruction (alpaca_eval); both: judge "
                   "both orders and average (cancels position bias, twice the cost).")
@click.option("--judge-batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Prompts per forward pass of a local (hf) judge.")
@click.option("--judge-cache", default=None,
              help="Folder of cached judgements, shared by runs [default: $ICR_CACHE/judgements, i.e. "
                   "~/.cache/icr/judgements].")
@click.option("--estimate-only", is_flag=True,
              help="Generate missing outputs, print how many judgements (and ≈tokens) are needed, and stop.")
@click.option("--lc-data", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Path of alpaca_eval's df_gamed.csv for the length-controlled win rate "
                   "[default: the Hub copy alpaca_eval uses, if cached or online].")
@click.option("--no-lc", is_flag=True, help="Skip the length-controlled win rate.")
@click.option("--temperature", default=0.6, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Sampling temperature of the evaluated models (paper: 0.6).")
@click.option("--top-p", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Nucleus sampling mass (paper: 0.9).")
@click.option("--max-new-tokens", default=2048, show_default=True, type=click.IntRange(min=1),
              help="Token limit per output (paper: 2048).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the per-instruction sampling seeds and of the judging order.")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="Generation backend of the evaluated models.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Instructions decoded together by the hf backend (speed only; seeds are per instruction).")
@click.option("--device", default="auto", show_default=True, help="Device of the models: auto, cpu, cuda, cuda:1...")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Weights dtype (auto = bfloat16 on a GPU, float32 on a CPU).")
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for outputs, annotations, results and the leaderboard (re-running resumes).")
def eval_command(model_options, run_dir, outputs_options, languages, prompts, reference_outputs, limit, judge,
                 judge_model, judge_base_url, judge_api_key_env, judge_concurrency, judge_rpm, judge_max_retries,
                 judge_timeout, judge_order, judge_batch_size, judge_cache, estimate_only, lc_data, no_lc,
                 temperature, top_p, max_new_tokens, seed, backend, batch_size, device, dtype, output_dir):
    """X-AlpacaEval: answer the instructions of each language with every model (paper decoding),
    judge each output against the reference output pairwise, and write the leaderboard (LC and WR
    per language and on average) as Markdown, CSV and PNG."""
    from icr.data import DataError
    from icr.distributed import current_shard
    from icr.evaluate import evaluate
    from icr.judges import JudgeError, make_judge
    from icr.languages import UnknownLanguageError, check_language

    models: list[EvalModel] = run_dir_models(run_dir) if run_dir else []
    models += [parse_model_option(m) for m in model_options]
    models += [EvalModel(name, outputs=folder) for name, folder in (_split_pair(o, "--outputs")
                                                                     for o in outputs_options)]
    if not models:
        raise click.UsageError("nothing to evaluate: give --model, --run-dir or --outputs")
    langs = [code.strip() for code in languages.split(",") if code.strip()]
    try:
        langs = [check_language(code) for code in langs]
    except UnknownLanguageError as err:
        raise click.BadParameter(str(err), param_hint="--languages") from None

    def build_judge():
        return make_judge(judge, judge_model, base_url=judge_base_url, api_key_env=judge_api_key_env,
                          concurrency=judge_concurrency, rpm=judge_rpm, max_retries=judge_max_retries,
                          timeout=judge_timeout, batch_size=judge_batch_size, device=device, dtype=dtype)

    decoding = Decoding(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                        backend=backend, batch_size=batch_size)
    try:
        table = evaluate(models, langs, prompts, output_dir, build_judge, reference=reference_outputs,
                         cache_dir=judge_cache or _default_cache(), limit=limit, order=judge_order,
                         decoding=decoding, lc_data=lc_data, lc=not no_lc, device=device, dtype=dtype,
                         estimate_only=estimate_only)
    except (DataError, JudgeError) as err:
        raise click.ClickException(str(err)) from None
    if not current_shard().is_main:  # under `accelerate launch`: the main process judges and reports
        return
    if estimate_only:
        click.echo("estimate only: no judgement requested (see the log line above)")
        return
    board = (Path(output_dir) / "leaderboard.md").read_text(encoding="utf-8")
    click.echo(board.split("\n## Details")[0])
    click.echo(f"{len(table)} results written to {output_dir} (leaderboard.md, leaderboard.csv, leaderboard.png)")
