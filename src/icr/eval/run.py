"""`icr eval`: X-AlpacaEval outputs (generated or read), judgements (cached), metrics, leaderboard.

OUT/
  outputs/{model}/{lang}/...                  the models' answers (`icr.eval.outputs`)
  annotations/{model}/{lang}.json             alpaca_eval annotations: output_1 = reference, output_2 = model,
                                              preference in [1, 2] (2 = model better)
  results.json, results.csv                   every metric per model and language, judge and settings
  leaderboard.md, leaderboard.csv, leaderboard.png   the paper's Table 2 layout (`icr.eval.leaderboard`)
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from icr.config import EvalConfig, ModelsConfig
from icr.core.distributed import current_shard
from icr.core.errors import ConfigError, DataError
from icr.core.io import read_jsonl, write_json_atomic
from icr.core.models import cache_root
from icr.eval.benchmark import load_benchmark, read_outputs, resolve_sources
from icr.eval.judges import credentials_problem, make_judge
from icr.eval.judges.base import Judge
from icr.eval.judges.cache import JudgementCache
from icr.eval.judging import PairItem, PairResult, judge_pairs
from icr.eval.leaderboard import write_results
from icr.eval.metrics import LCUnavailable, load_gamed_table, summarize
from icr.eval.outputs import EvalModel, decoding_record, generate_outputs, safe_name
from icr.runtime.child_process import open_generator

log = logging.getLogger(__name__)

Outputs = dict[tuple[str, str], dict[str, str]]  # (model, lang) -> {id: output}


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def collect_outputs(config: EvalConfig, models: list[EvalModel], bench: dict[str, list[dict]]) -> Outputs:
    """Every model's outputs in every language: read (--outputs) or generated (resuming); under
    `accelerate launch` generation is split across the processes."""
    shard, outputs = current_shard(), {}
    loading = ModelsConfig(device=config.device, dtype=config.dtype)
    for model in models:
        if model.outputs:
            for lang in config.languages:
                outputs[model.name, lang] = read_outputs(model.outputs, lang, bench[lang])
            continue
        generator = None
        with ExitStack() as opened:  # an isolated backend's (vLLM's) child process exits with the model
            for lang in config.languages:
                folder = Path(config.output) / "outputs" / safe_name(model.name) / lang
                done = {str(r.get("id")) for r in read_jsonl(folder / "generations.jsonl", repair=True)}
                if generator is None and any(str(it["id"]) not in done for it in bench[lang]):
                    generator = opened.enter_context(
                        open_generator(
                            model.spec,
                            config.sampling,
                            loading,
                            loading.load,
                        )
                    )
                outputs[model.name, lang] = generate_outputs(
                    generator, model, lang, bench[lang], folder, config.sampling, config.seed, shard
                )
        del generator
        _free_memory()
    return outputs


def annotations(
    model: EvalModel,
    lang: str,
    items: list[dict],
    outputs: Outputs,
    judge_id: str,
    results: dict[tuple[str, str, str], PairResult],
) -> list[dict[str, Any]]:
    """alpaca_eval's annotation rows of one model in one language."""
    rows = []
    for it in items:
        res = results[model.name, lang, str(it["id"])]
        rows.append(
            {
                "id": it["id"],
                "instruction": it["instruction"],
                "output_1": it["reference"],
                "output_2": outputs[model.name, lang][str(it["id"])],
                "generator_1": it["reference_generator"],
                "generator_2": model.name,
                "annotator": judge_id,
                "preference": None if res.p_model is None else 1.0 + res.p_model,
                "n_judgements": res.n_judgements,
                "rule": res.rule,
            }
        )
    return rows


def _gamed_table(config: EvalConfig) -> tuple[pd.DataFrame | None, str | None]:
    """alpaca_eval's df_gamed table for LC, or None and the reason it is not computed."""
    if not config.lc:
        return None, "disabled (--no-lc)"
    try:
        return load_gamed_table(config.lc_data), None
    except LCUnavailable as err:
        log.warning("length-controlled win rates not computed: %s", err)
        return None, str(err)


def evaluate(
    config: EvalConfig, models: list[EvalModel], judge_factory: Callable[[], Judge] | None = None
) -> pd.DataFrame:
    """Outputs, judgements, metrics and leaderboard files (see the module docstring). Returns the
    long results table (one row per model and language); empty on processes other than the main one."""
    out = Path(config.output)
    names = [safe_name(m.name) for m in models]
    if len(set(names)) != len(names):
        raise DataError(f"model names must be unique (as folder names): {names}")
    prompt_dir, reference_dir = resolve_sources(config.prompts, config.reference_outputs)
    bench = {lang: load_benchmark(prompt_dir, reference_dir, lang, config.limit) for lang in config.languages}
    problem = None if judge_factory or config.estimate_only else credentials_problem(config.judge)
    if problem:  # before any output is generated
        raise ConfigError(problem)
    outputs = collect_outputs(config, models, bench)
    if not current_shard().is_main:  # judging and metrics: the main process alone
        return pd.DataFrame()
    items = [
        PairItem(m.name, lang, it["id"], it["instruction"], outputs[m.name, lang][str(it["id"])], it["reference"])
        for m in models
        for lang in config.languages
        for it in bench[lang]
    ]
    judge = (judge_factory or (lambda: make_judge(config.judge, config.device, config.dtype)))()
    cache = JudgementCache(config.judge.cache or cache_root() / "judgements")
    results, stats = judge_pairs(judge, cache, items, config.judge.order, config.seed, config.estimate_only)
    if config.estimate_only:
        return pd.DataFrame()
    gamed, lc_reason = _gamed_table(config)
    rows = []
    for m in models:
        for lang in config.languages:
            anns = annotations(m, lang, bench[lang], outputs, judge.judge_id, results)
            write_json_atomic(out / "annotations" / safe_name(m.name) / f"{lang}.json", anns)
            frame = pd.DataFrame(anns).astype({"preference": float})
            rows.append({"model": m.name, "lang": lang, **summarize(frame, lang, gamed, lc_reason)})
    table = pd.DataFrame(rows)
    meta = {
        "judge": judge.describe(),
        "judging": {**stats, "order": config.judge.order, "seed": config.seed},
        "reference": sorted({it["reference_generator"] for b in bench.values() for it in b}),
        "prompts": str(prompt_dir),
        "reference_outputs": str(reference_dir),
        "languages": list(config.languages),
        "limit": config.limit,
        "n_instructions": {lang: len(b) for lang, b in bench.items()},
        "decoding": {**decoding_record(config.sampling, config.seed), "batch_size": config.sampling.batch_prompts},
        "models": [asdict(m) for m in models],
        "lc_data": config.lc_data,
        "lc_unavailable": lc_reason,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_results(table, meta, out)
    return table
