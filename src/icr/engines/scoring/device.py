"""How the scorer runs on each kind of device: a small registry of `ScoringProfile`s.

A profile names what differs between a CPU and a GPU, so that the scorer has no device tests of
its own:

| | CPU | CUDA |
|---|---|---|
| output layer | vocabulary slices, running logsumexp | full vocabulary, rows in chunks, fp32 logsumexp |
| prompt prefill | one prompt per forward | many prompts per forward (right-padded, bucketed) |
| widths | exact | rounded up to a multiple of 64 (few distinct shapes: kernel plans are reused) |
| attention | key/value heads as they are (SDPA `enable_gqa`) | transformers' default |
| host → device copies | plain | pinned, non-blocking (no wait on the GPU queue) |
| `reward.token_budget: auto` | 4096 | from free device memory |

Devices without a profile of their own (mps, xpu) get the CUDA one, with the 4096 default budget.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from icr.engines.scoring.head import row_chunked_logprobs, vocab_sliced_logprobs

CPU_TOKEN_BUDGET = 4096  # `token_budget: auto` on a CPU (measured there: `make bench`)
GPU_LOGIT_ELEMENTS = 1 << 27  # logits of one row chunk on a GPU: 512 MiB in fp32
GPU_SHAPE_BUCKET = 64
AUTO_MEMORY_SHARE = 0.5  # of the free device memory, for one forward's cache and activations
AUTO_BUDGET_RANGE = (4096, 65536)  # 16384 and 65536 ran at the same rate on an H200


@dataclass(frozen=True)
class ScoringProfile:
    name: str
    output_layer: Callable[..., torch.Tensor]  # (model, hidden [M, H], targets [M]) -> float32 [M]
    batched_prefill: bool  # prompts share prefill forwards
    shape_bucket: int  # widths are rounded up to a multiple of this
    kv_heads_as_they_are: bool  # attention through SDPA enable_gqa (see icr.engines.scoring.scorer._gqa_attention)
    auto_token_budget: Callable[[torch.nn.Module, torch.device], int]

    def round_width(self, width: int) -> int:
        return -(-width // self.shape_bucket) * self.shape_bucket

    def to_device(self, values, device: torch.device, dtype=torch.long) -> torch.Tensor:
        """A host list as a device tensor; on a GPU through pinned memory without waiting for the queue
        (a plain copy from pageable memory makes the host wait for every kernel queued before it)."""
        tensor = torch.tensor(values, dtype=dtype)
        if device.type != "cuda":
            return tensor.to(device)
        return tensor.pin_memory().to(device, non_blocking=True)


def bytes_per_scored_token(config, dtype: torch.dtype) -> int:
    """Device memory one token of a scoring forward holds at its peak: its key/value cache in every
    layer (a sub-batch caches up to two budgets of tokens, icr.engines.scoring.scorer.CACHE_BUDGET_FACTOR) plus the
    activations of one layer (q, k, v, attention out, residuals: ~8 hidden; MLP: ~3 intermediate)."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    size = torch.finfo(dtype).bits // 8
    cache = config.num_hidden_layers * 2 * kv_heads * head_dim * 2
    return size * (cache + 8 * hidden + 3 * intermediate)


def cuda_token_budget(model, device: torch.device) -> int:
    """Tokens per forward that fit in AUTO_MEMORY_SHARE of the free memory, rounded down to a power
    of two (stable across small changes in free memory), within AUTO_BUDGET_RANGE."""
    free, _ = torch.cuda.mem_get_info(device)
    dtype = next(model.parameters()).dtype
    fits = int(AUTO_MEMORY_SHARE * free) // bytes_per_scored_token(model.config, dtype)
    low, high = AUTO_BUDGET_RANGE
    return max(low, min(high, 1 << max(fits, 1).bit_length() - 1))


PROFILES: dict[str, ScoringProfile] = {
    "cpu": ScoringProfile(
        "cpu",
        vocab_sliced_logprobs,
        batched_prefill=False,
        shape_bucket=1,
        kv_heads_as_they_are=True,
        auto_token_budget=lambda model, device: CPU_TOKEN_BUDGET,
    ),
    "cuda": ScoringProfile(
        "cuda",
        functools.partial(row_chunked_logprobs, logit_elements=GPU_LOGIT_ELEMENTS),
        batched_prefill=True,
        shape_bucket=GPU_SHAPE_BUCKET,
        kv_heads_as_they_are=False,
        auto_token_budget=cuda_token_budget,
    ),
}
OTHER_ACCELERATORS = ScoringProfile(
    "accelerator",
    PROFILES["cuda"].output_layer,
    batched_prefill=True,
    shape_bucket=GPU_SHAPE_BUCKET,
    kv_heads_as_they_are=False,
    auto_token_budget=lambda model, device: CPU_TOKEN_BUDGET,
)


def profile_for(device: torch.device | str) -> ScoringProfile:
    return PROFILES.get(torch.device(device).type, OTHER_ACCELERATORS)


def resolve_token_budget(token_budget: int | str, model, profile: ScoringProfile) -> int:
    """An integer budget as given; 'auto' is the profile's for the model's device (on a GPU, sized
    from its free memory now: `icr.engines.scoring.scorer.Scorer` resolves it once and keeps it)."""
    if token_budget != "auto":
        return int(token_budget)
    return profile.auto_token_budget(model, next(model.parameters()).device)
