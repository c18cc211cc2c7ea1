"""The outputs of the evaluated models: who is evaluated, and their answers to the benchmark.

    OUT/outputs/{model}/{lang}/model_outputs.json   alpaca_eval format: generator, dataset, id, instruction, output
    OUT/outputs/{model}/{lang}/generations.jsonl    the same plus response_tokens, truncated, seed (the job's file)
    OUT/outputs/{model}/{lang}/generation.json      model spec and decoding; a resume must match it

Generation follows the paper (`icr.config.EvalConfig.sampling`: one sample per instruction, a
per-instruction seed) through the same resumable, sharded job as the run's stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icr.config import EvalConfig, SamplingConfig
from icr.core.distributed import Shard
from icr.core.io import read_json, write_json_atomic
from icr.engines.sampling.base import Generator, prompt_seed
from icr.eval.benchmark import OutputsError
from icr.runtime.jobs import run_job
from icr.runtime.rundir import run_models


@dataclass(frozen=True)
class EvalModel:
    """A row of the leaderboard: a model to generate with (`spec`) or existing outputs (`outputs`)."""

    name: str
    spec: str | None = None
    outputs: str | None = None  # folder of {lang}.json or {lang}/model_outputs.json


def parse_model_option(value: str) -> EvalModel:
    """'name=spec' or a bare spec (named after its last path component)."""
    name, sep, spec = value.partition("=")
    if not sep or not name or "/" in name:
        spec = value
        name = Path(value.rstrip("/")).name or value
    return EvalModel(name=name, spec=spec)


def parse_outputs_option(value: str) -> EvalModel:
    """'NAME=FOLDER' of existing outputs."""
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise OutputsError(f"--outputs {value!r}: expected NAME=FOLDER")
    return EvalModel(name, outputs=folder)


def eval_models(config: EvalConfig) -> list[EvalModel]:
    """The leaderboard's rows: the run folder's models, then --model, then --outputs, in order."""
    models = [EvalModel(name, spec) for name, spec in run_models(config.run_dir)] if config.run_dir else []
    return models + [parse_model_option(m) for m in config.models] + [parse_outputs_option(o) for o in config.outputs]


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._") or "model"


def decoding_record(sampling: SamplingConfig, seed: int) -> dict[str, Any]:
    """The decoding settings an output depends on (batch size and parallelism are speed only)."""
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": seed,
        "backend": sampling.backend,
    }


def _check_meta(folder: Path, meta: dict[str, Any], shard: Shard) -> None:
    meta_path = folder / "generation.json"
    if meta_path.exists() and read_json(meta_path) != meta:
        raise OutputsError(
            f"{folder}: outputs were generated with {read_json(meta_path)}, not {meta}; "
            "use another --output folder or delete this one"
        )
    if shard.is_main:
        write_json_atomic(meta_path, meta)


def generate_outputs(
    generator: Generator,
    model: EvalModel,
    lang: str,
    items: list[dict],
    folder: Path,
    sampling: SamplingConfig,
    seed: int,
    shard: Shard = Shard(),
) -> dict[str, str]:
    """Answer every item not yet in `folder/generations.jsonl` (one sample, per-id seed), then write
    `model_outputs.json` in benchmark order. A folder generated with another model or decoding is
    an error, never silently mixed."""
    _check_meta(folder, {"model": model.spec, "decoding": decoding_record(sampling, seed)}, shard)

    def process(chunk: list[dict]) -> list[dict]:
        seeds = [prompt_seed(seed, 0, lang, str(it["id"])) for it in chunk]
        samples = generator.sample_batch([it["instruction"] for it in chunk], 1, seeds)
        return [
            {
                "id": it["id"],
                "instruction": it["instruction"],
                "output": s[0].text,
                "response_tokens": s[0].response_tokens,
                "truncated": s[0].truncated,
                "seed": row_seed,
            }
            for it, row_seed, s in zip(chunk, seeds, samples)
        ]

    log_path = folder / "generations.jsonl"
    merged = run_job(
        log_path, items, lambda it: str(it["id"]), sampling.batch_prompts, process, shard, f"eval {model.name}/{lang}"
    )
    done = {str(r["id"]): r for r in merged}
    for it in items:  # a resume log written for other prompts must not be passed off as answers to these
        if done[str(it["id"])]["instruction"].strip() != it["instruction"].strip():
            raise OutputsError(f"{log_path}: id {it['id']}: instruction differs from the benchmark's")
    ordered = [done[str(it["id"])] for it in items]
    if shard.is_main:
        write_json_atomic(
            folder / "model_outputs.json",
            [
                {
                    "generator": model.name,
                    "dataset": it["dataset"],
                    "id": r["id"],
                    "instruction": r["instruction"],
                    "output": r["output"],
                }
                for it, r in zip(items, ordered)
            ],
        )
    return {str(r["id"]): r["output"] for r in ordered}
