"""The transformers sampling backend: one prefill per prompt, its cache shared by the n samples,
per-row seeded streams."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from icr.config import ModelsConfig, SamplingConfig
from icr.core.chat import end_of_turn_ids, prompt_ids
from icr.core.models import LoadedModel
from icr.core.oom import OomBackoff
from icr.engines.sampling.base import Generator, Sample, decode_generated


class RowSeededSampler:
    """Logits processor that samples each row from its own seeded stream (Gumbel-max trick).

    argmax(logits/T + Gumbel noise), after top-p filtering, is a draw from the temperature/top-p
    distribution; the noise of row i at step k depends only on row i's seed, so a prompt's samples
    do not depend on which other prompts share its batch. Used with greedy decoding."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        uniform = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
        return scores + gumbel


class HFGenerator:
    """transformers backend: prefill a batch of prompts once, expand each prompt's cache to its
    n rows, decode. Rows draw from per-row seeded streams (`RowSeededSampler`). On a GPU a chunk is
    decoded in as few calls as free memory allows (`rows_that_fit`); a call that runs out of memory
    all the same is decoded in halves (`icr.core.oom.OomBackoff`). The samples depend on neither."""

    def __init__(self, lm: LoadedModel, config: SamplingConfig):
        self.lm, self.config = lm, config
        self.stop_ids = end_of_turn_ids(lm.tokenizer, lm.model)
        self.oom = OomBackoff(
            "generation",
            "Lower the token limit (generate.max_new_tokens; "
            "`icr eval`: --max-new-tokens) or data.max_prompt_tokens, or free the GPU",
        )

    def prompt_length(self, instruction: str) -> int:
        return len(prompt_ids(self.lm.tokenizer, instruction))

    def sample_batch(self, instructions: list[str], n: int, seeds: list[int]) -> list[list[Sample]]:
        """n samples for each instruction; sample j of prompt i uses the stream seeded (seeds[i], j).
        The rows (prompt, sample) of one call are decoded with its prompts left-padded to the call's
        width, in halves of that width too when they run out of memory."""
        encoded = [prompt_ids(self.lm.tokenizer, text) for text in instructions]
        fit = rows_that_fit(self.lm.model, max(len(e) for e in encoded) + self.config.max_new_tokens)
        per_call = len(encoded) if fit is None else max(1, fit // n)
        samples: list[Sample] = []
        for k in range(0, len(encoded), per_call):
            call = range(k, min(k + per_call, len(encoded)))
            width = max(len(encoded[i]) for i in call)
            rows = [(i, j) for i in call for j in range(n)]
            samples += self.oom.run(
                rows, width + self.config.max_new_tokens, partial(self._sample_rows, encoded, width=width, seeds=seeds)
            )
        return [samples[i * n : (i + 1) * n] for i in range(len(encoded))]

    @torch.no_grad()
    def _sample_rows(
        self, encoded: list[list[int]], rows: list[tuple[int, int]], width: int, seeds: list[int]
    ) -> list[Sample]:
        """Decode the rows (prompt i, sample j), grouped by prompt, prompts left-padded to `width`."""
        from transformers import LogitsProcessorList

        model, tok, cfg, device = self.lm.model, self.lm.tokenizer, self.config, self.lm.device
        prompts = sorted({i for i, _ in rows})
        counts = [sum(1 for i, _ in rows if i == p) for p in prompts]
        repeats = torch.tensor(counts, device=device)
        pad = tok.pad_token_id
        # Left padding: every prompt ends at the same column, where generation starts.
        ids = torch.tensor([[pad] * (width - len(encoded[p])) + encoded[p] for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[p])) + [1] * len(encoded[p]) for p in prompts], device=device)
        kwargs = {}
        if width > 1:  # the last prompt token is fed by generate(); the rest is computed once per prompt
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            cache = model(
                input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True
            ).past_key_values
            if len(set(counts)) == 1:
                cache.batch_repeat_interleave(counts[0])
            else:  # a call split in halves: some prompts keep only part of their rows
                cache.batch_select_indices(torch.arange(len(prompts), device=device).repeat_interleave(repeats))
            kwargs["past_key_values"] = cache
        row_seeds = [seeds[i] * 1000 + j for i, j in rows]
        out = model.generate(
            input_ids=ids.repeat_interleave(repeats, 0),
            attention_mask=mask.repeat_interleave(repeats, 0),
            do_sample=False,
            logits_processor=LogitsProcessorList([RowSeededSampler(row_seeds, cfg.temperature, cfg.top_p, device)]),
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
            **kwargs,
        )
        return [decode_generated(self.lm.tokenizer, row, self.stop_ids) for row in out[:, width:].tolist()]


GENERATION_MEMORY_SHARE = 0.8  # of the free GPU memory, for one generate call's cache and logits


def rows_that_fit(model, tokens_per_row: int) -> int | None:
    """Rows one `generate` call can hold in GENERATION_MEMORY_SHARE of the free GPU memory: each row
    caches `tokens_per_row` tokens' keys/values in every layer and holds a few fp32 vocabulary-wide
    score vectors (the sampler's). None off CUDA (no limit: the chunk is decoded whole)."""
    parameter = next(model.parameters())
    if parameter.device.type != "cuda":
        return None
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    per_token = config.num_hidden_layers * 2 * kv_heads * head_dim * parameter.element_size()
    per_row = tokens_per_row * per_token + 8 * config.vocab_size * 4
    free, _ = torch.cuda.mem_get_info(parameter.device)
    return max(1, int(GENERATION_MEMORY_SHARE * free) // per_row)


def _hf_backend(
    spec: str, config: SamplingConfig, models: ModelsConfig, load: Callable[[str], LoadedModel]
) -> Generator:
    return HFGenerator(load(spec), config)
