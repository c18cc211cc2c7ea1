"""Stage 1, generate: the policy π^t samples generate.n responses to every prompt, in its own
language (`icr.engines.sampling` samples; this driver feeds it the prompts and writes the records). An
isolated backend (vLLM) runs in a child process that exits with the stage
(`icr.runtime.child_process.open_generator`), so the reward stage's two models find the GPU memory free."""

from __future__ import annotations

import logging
from pathlib import Path

from icr.config import GenerateConfig
from icr.core.distributed import Shard
from icr.core.prompts import Prompt
from icr.core.records import GenerationRecord
from icr.engines.sampling.base import Generator, Sample, prompt_seed
from icr.runtime.child_process import open_generator
from icr.runtime.jobs import run_job
from icr.stages.base import Stage, StageContext, language_files

log = logging.getLogger(__name__)


def generation_record(prompt: Prompt, samples: list[Sample], seed: int, skipped: str | None = None) -> GenerationRecord:
    return GenerationRecord(
        prompt.id,
        prompt.lang,
        prompt.text,
        [s.text for s in samples],
        [s.response_tokens for s in samples],
        [s.truncated for s in samples],
        seed,
        skipped,
    )


def generate_language(
    generator: Generator,
    prompts: list[Prompt],
    out_file: Path,
    config: GenerateConfig,
    *,
    seed: int,
    iteration: int,
    max_prompt_tokens: int,
    shard: Shard = Shard(),
) -> list[dict]:
    """Sample for every prompt not yet in `out_file` (`icr.runtime.jobs.run_job`: fixed chunks of
    `config.batch_prompts`, resumable, sharded). A prompt longer than `max_prompt_tokens` is not
    truncated: it gets a record with no responses and a `skipped` reason, never silently lost."""

    def process(chunk: list[Prompt]) -> list[dict]:
        seeds = [prompt_seed(seed, iteration, p.lang, p.id) for p in chunk]
        lengths = [generator.prompt_length(p.text) for p in chunk]
        fits = [i for i, length in enumerate(lengths) if length <= max_prompt_tokens]
        samples = (
            dict(zip(fits, generator.sample_batch([chunk[i].text for i in fits], config.n, [seeds[i] for i in fits])))
            if fits
            else {}
        )
        records = []
        for i, prompt in enumerate(chunk):
            skipped = None
            if i not in samples:
                log.warning(
                    "%s/%s: prompt has %d tokens > %d: skipped", prompt.lang, prompt.id, lengths[i], max_prompt_tokens
                )
                skipped = f"prompt has {lengths[i]} tokens > data.max_prompt_tokens={max_prompt_tokens}"
            records.append(generation_record(prompt, samples.get(i, []), seeds[i], skipped).to_json())
        return records

    lang = prompts[0].lang if prompts else ""
    return run_job(
        out_file, prompts, lambda p: p.id, config.batch_prompts, process, shard, f"generate {lang}", "prompt"
    )


def run_generate(ctx: StageContext) -> dict:
    run, config = ctx.run, ctx.config
    spec = run.policy_spec(ctx.t)
    with open_generator(spec, config.generate, config.models, ctx.pool.get) as generator:
        records = {
            lang: generate_language(
                generator,
                prompts,
                run.generations_dir(ctx.t) / f"{lang}.jsonl",
                config.generate,
                seed=config.seed,
                iteration=ctx.t,
                max_prompt_tokens=config.data.max_prompt_tokens,
                shard=run.shard,
            )
            for lang, prompts in ctx.prompts.by_lang.items()
        }
    return {"policy": spec, "records": {lang: len(v) for lang, v in records.items()}}


STAGE = Stage(
    name="generate",
    summary="Stage 1: sample generate.n responses per prompt and language from π^t.",
    sections=("seed", "models", "data", "generate"),
    inputs=lambda run, t: [],
    outputs=language_files(lambda run, t: run.generations_dir(t)),
    run=run_generate,
    unit="prompt",
    expected=lambda ctx: len(ctx.prompts),
    counts_records=True,
)
