"""Sampling engine: n responses per instruction, each prompt from its own seeded streams.

Each prompt gets its own seed, derived from (run seed, iteration, language, id) by `prompt_seed`,
and its n samples are drawn in one batched call: results do not depend on batch composition, on
the number of processes, or on where an interrupted run resumed. The hf backend encodes a prompt
once and shares its key/value cache among the n samples (on a GPU, a chunk in as few `generate`
calls as free memory allows, and a call that runs out of memory all the same in halves:
`icr.core.oom.OomBackoff`); hf-paged hands a chunk to transformers' continuous batching, whose
samples depend on the chunking (`icr.engines.sampling.hf_paged`); vLLM decodes a chunk in one
`llm.generate` call with prefix caching, and manages its own memory.
Backends live in `BACKENDS`, chosen by `backend` of the sampling config; a backend marked
`isolated` is run by the drivers in a child process (`icr.runtime.child_process.open_generator`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from icr.config import ModelsConfig, SamplingConfig
from icr.core.models import LoadedModel
from icr.engines.sampling.base import Generator, Sample, prompt_seed
from icr.engines.sampling.hf import _hf_backend
from icr.engines.sampling.hf_paged import _hf_paged_backend
from icr.engines.sampling.vllm import _vllm_backend

__all__ = ["BACKENDS", "Backend", "Generator", "Sample", "make_generator", "prompt_seed"]


@dataclass(frozen=True)
class Backend:
    build: Callable[[str, SamplingConfig, ModelsConfig, Callable[[str], LoadedModel]], Generator]
    # Run in a child process that ends with the generation (icr.runtime.child_process.open_generator): the
    # backend keeps its GPU memory until its process exits, which the reward stage's models need.
    isolated: bool = False


BACKENDS: dict[str, Backend] = {
    "hf": Backend(_hf_backend),
    "hf-paged": Backend(_hf_paged_backend),
    "vllm": Backend(_vllm_backend, isolated=True),
}


def make_generator(
    spec: str, config: SamplingConfig, models: ModelsConfig, load: Callable[[str], LoadedModel]
) -> Generator:
    """The generator of `config.backend` for model `spec`; `load` loads a model in-process
    (backends that load their own weights, like vLLM, do not call it)."""
    return BACKENDS[config.backend].build(spec, config, models, load)
