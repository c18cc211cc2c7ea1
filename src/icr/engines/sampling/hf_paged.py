"""The `hf-paged` sampling backend: transformers' continuous batching with a paged key/value cache.

All of a chunk's prompts, each with its n samples (`num_return_sequences`, so the n rows fork from
one prefilled prompt), go to one `generate_batch` call; the scheduler refills finished rows with
waiting ones, so short answers do not hold a batch slot while long ones decode.

Seeds: the library draws every row's tokens from one generator per call (`ContinuousBatchingConfig.
seed`), not from a stream per prompt. A call's seed is derived from the seeds of its prompts
(`call_seed`), so the same chunk gives the same samples: a resumed or sharded run gives identical
files, since the jobs cut the prompt list into fixed chunks. Samples do depend on the chunking
(`batch_prompts`): unlike the `hf` and `vllm` backends, a prompt's samples change with the prompts
that share its call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from icr.config import ModelsConfig, SamplingConfig
from icr.core.chat import end_of_turn_ids, prompt_ids
from icr.core.errors import IcrError
from icr.core.models import LoadedModel
from icr.engines.sampling.base import Generator, Sample, decode_generated

CHILD_MARK = "__child#"  # transformers names the forked rows '<parent id>__child#<k>'


def call_seed(seeds: list[int]) -> int:
    """One 31-bit seed for a call, from the seeds of its prompts in order (sha256 of 'a|b|c')."""
    digest = hashlib.sha256("|".join(map(str, seeds)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def group_outputs(results: Mapping[str, Any], n_prompts: int, n: int) -> list[list[list[int]]]:
    """The generated token ids of each prompt's n rows, in prompt order, from `generate_batch`'s
    results (keyed by request id, parents and their forked children). Request ids are grouped by
    parent in the order the parents first appear, which is the order of the inputs. A failed or
    missing row is an error: a chunk is written whole or not at all."""
    rows: dict[str, list[list[int]]] = {}
    for request_id, output in results.items():
        if getattr(output, "error", None):
            raise IcrError(f"hf-paged generation failed for request {request_id}: {output.error}")
        parent = request_id.split(CHILD_MARK)[0]
        rows.setdefault(parent, []).append(list(output.generated_tokens))
    grouped = list(rows.values())
    if len(grouped) != n_prompts or any(len(g) != n for g in grouped):
        counts = [len(g) for g in grouped]
        raise IcrError(f"hf-paged returned rows {counts} for {n_prompts} prompts × {n} samples")
    return grouped


class HFPagedGenerator:
    """transformers continuous batching (`generate_batch`): one call per chunk, n samples per prompt."""

    def __init__(self, lm: LoadedModel, config: SamplingConfig):
        self.lm, self.config = lm, config
        self.stop_ids = end_of_turn_ids(lm.tokenizer, lm.model)

    def prompt_length(self, instruction: str) -> int:
        return len(prompt_ids(self.lm.tokenizer, instruction))

    def generation_config(self, n: int):
        from transformers import GenerationConfig

        tok, cfg = self.lm.tokenizer, self.config
        return GenerationConfig(
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,  # transformers' default top-k of 50 would cut the paper's top_p=1 distribution
            max_new_tokens=cfg.max_new_tokens,
            num_return_sequences=n,
            eos_token_id=self.stop_ids,
            pad_token_id=tok.pad_token_id,
        )

    def sample_batch(self, instructions: list[str], n: int, seeds: list[int]) -> list[list[Sample]]:
        from transformers import ContinuousBatchingConfig

        inputs = [prompt_ids(self.lm.tokenizer, text) for text in instructions]
        results = self.lm.model.generate_batch(
            inputs,
            generation_config=self.generation_config(n),
            continuous_batching_config=ContinuousBatchingConfig(seed=call_seed(seeds)),
            warmup=False,  # CUDA-graph capture sized for the largest batch; not worth it per chunk
        )
        grouped = group_outputs(results, len(inputs), n)
        return [[decode_generated(self.lm.tokenizer, row, self.stop_ids) for row in rows] for rows in grouped]


def _hf_paged_backend(
    spec: str, config: SamplingConfig, models: ModelsConfig, load: Callable[[str], LoadedModel]
) -> Generator:
    return HFPagedGenerator(load(spec), config)
