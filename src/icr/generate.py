"""Stage 1, generate: the policy π^t samples N responses to every prompt, in its own language.

Each prompt gets its own seed, derived from (run seed, iteration, language, id), and its N
samples are drawn in one batched call: results do not depend on batch composition, on the number
of processes, or on where an interrupted run resumed. The prompt is encoded once and its key/value
cache shared by the N samples.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from icr.config import GenerateConfig
from icr.data import JsonlAppender, Prompt, PromptSet
from icr.distributed import Shard, owned_chunks, sharded_jsonl
from icr.models import LoadedModel, end_of_turn_ids, prompt_ids
from icr.progress import progress

log = logging.getLogger(__name__)


@dataclass
class Sample:
    text: str
    n_tokens: int  # generated tokens, end-of-turn excluded
    truncated: bool  # hit max_new_tokens before an end-of-turn token


def prompt_seed(seed: int, iteration: int, lang: str, prompt_id: str) -> int:
    digest = hashlib.sha256(f"{seed}|{iteration}|{lang}|{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Generator(Protocol):
    def sample(self, instruction: str, n: int, seed: int) -> list[Sample]: ...

    def prompt_length(self, instruction: str) -> int: ...


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
        uniform = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device)
                               for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
        return scores + gumbel


class HFGenerator:
    """transformers backend: prefill a batch of prompts once, expand each prompt's cache to its
    n rows, decode. Rows draw from per-row seeded streams (`RowSeededSampler`)."""

    def __init__(self, lm: LoadedModel, config: GenerateConfig):
        self.lm, self.config = lm, config
        self.stop_ids = end_of_turn_ids(lm.tokenizer, lm.model)

    def prompt_length(self, instruction: str) -> int:
        return len(prompt_ids(self.lm.tokenizer, instruction))

    def sample(self, instruction: str, n: int, seed: int) -> list[Sample]:
        return self.sample_batch([instruction], n, [seed])[0]

    @torch.no_grad()
    def sample_batch(self, instructions: list[str], n: int, seeds: list[int]) -> list[list[Sample]]:
        """n samples for each instruction; sample j of prompt i uses the stream seeded (seeds[i], j)."""
        from transformers import LogitsProcessorList

        model, tok, cfg = self.lm.model, self.lm.tokenizer, self.config
        encoded = [prompt_ids(tok, text) for text in instructions]
        width = max(len(e) for e in encoded)
        pad = tok.pad_token_id
        # Left padding: every prompt ends at the same column, where generation starts.
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.lm.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.lm.device)
        kwargs = {}
        if width > 1:  # the last prompt token is fed by generate(); the rest is computed once per prompt
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                          use_cache=True).past_key_values
            cache.batch_repeat_interleave(n)
            kwargs["past_key_values"] = cache
        row_seeds = [seed * 1000 + j for seed in seeds for j in range(n)]
        out = model.generate(
            input_ids=ids.repeat_interleave(n, 0),
            attention_mask=mask.repeat_interleave(n, 0),
            do_sample=False,
            logits_processor=LogitsProcessorList([RowSeededSampler(row_seeds, cfg.temperature, cfg.top_p,
                                                                   self.lm.device)]),
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
            **kwargs,
        )
        rows = [self._decode(row) for row in out[:, width:].tolist()]
        return [rows[i * n : (i + 1) * n] for i in range(len(instructions))]

    def _decode(self, tokens: list[int]) -> Sample:
        stops = set(self.stop_ids)
        end = next((k for k, t in enumerate(tokens) if t in stops), None)
        kept = tokens if end is None else tokens[:end]
        text = self.lm.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return Sample(text=text, n_tokens=len(kept), truncated=end is None)


class VLLMGenerator:
    """vLLM backend (GPU): prefix caching shares the prompt among the n samples."""

    def __init__(self, model_path: str, config: GenerateConfig, dtype: str = "auto", trust_remote_code=False,
                 allow_pickle: bool = False):
        from icr.models import _refuse_pickle

        _refuse_pickle(model_path, allow_pickle)  # vLLM loads the weights itself: refuse pickle files first
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise RuntimeError("generate.backend=vllm needs vLLM: pip install 'icr[vllm]' (GPU machines)") from None
        self._params = SamplingParams
        self.config = config
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            enable_prefix_caching=True,
            trust_remote_code=trust_remote_code,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def prompt_length(self, instruction: str) -> int:
        return len(prompt_ids(self.tokenizer, instruction))

    def sample(self, instruction: str, n: int, seed: int) -> list[Sample]:
        cfg = self.config
        params = self._params(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                              seed=seed)
        ids = prompt_ids(self.tokenizer, instruction)
        result = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
        return [Sample(o.text.strip(), len(o.token_ids), o.finish_reason == "length") for o in result.outputs]


def make_generator(lm_or_path, config: GenerateConfig, **kwargs) -> Generator:
    """Registry of generation backends, chosen by `generate.backend`."""
    backends = {
        "hf": lambda: HFGenerator(lm_or_path, config),
        "vllm": lambda: VLLMGenerator(lm_or_path, config, **kwargs),
    }
    return backends[config.backend]()


def generation_record(prompt: Prompt, samples: list[Sample], seed: int) -> dict:
    return {
        "id": prompt.id,
        "lang": prompt.lang,
        "prompt": prompt.text,
        "responses": [s.text for s in samples],
        "n_tokens": [s.n_tokens for s in samples],
        "truncated": [s.truncated for s in samples],
        "seed": seed,
    }


def generate_language(
    generator: Generator,
    prompts: list[Prompt],
    out_file: Path,
    config: GenerateConfig,
    seed: int,
    iteration: int,
    max_prompt_tokens: int,
    shard: Shard = Shard(),
) -> list[dict]:
    """Sample for every prompt not yet in `out_file` (appending), then rewrite it in prompt order.

    Prompts are decoded in fixed chunks of `config.batch_prompts` (chunk k always holds the same
    prompts, and belongs to process k % P of P), and a chunk left incomplete by a crash is decoded
    again whole, so a resumed or sharded run writes exactly what an uninterrupted one would. A
    prompt longer than `max_prompt_tokens` is not truncated: it gets a record with no responses
    and a `skipped` reason, never silently lost."""
    lang = prompts[0].lang if prompts else ""

    def work(target: Path, done: set[str]) -> None:
        mine = owned_chunks(prompts, config.batch_prompts, shard, done, key=lambda p: p.id)
        todo = sum(p.id not in done for c in mine for p in c)
        with JsonlAppender(target) as out, progress(todo, f"generate {lang}", "prompt") as bar:
            for chunk in mine:
                seeds = {p.id: prompt_seed(seed, iteration, p.lang, p.id) for p in chunk}
                lengths = {p.id: generator.prompt_length(p.text) for p in chunk}
                fits = [p for p in chunk if lengths[p.id] <= max_prompt_tokens]
                samples = _sample_chunk(generator, fits, config.n, [seeds[p.id] for p in fits])
                for p in chunk:
                    if p.id in done:
                        continue
                    if p.id in samples:
                        record = generation_record(p, samples[p.id], seeds[p.id])
                    else:
                        log.warning("%s/%s: prompt has %d tokens > %d: skipped", lang, p.id, lengths[p.id],
                                    max_prompt_tokens)
                        record = generation_record(p, [], seeds[p.id])
                        record["skipped"] = (f"prompt has {lengths[p.id]} tokens > "
                                             f"data.max_prompt_tokens={max_prompt_tokens}")
                    out.write(record)
                    bar.update(1)

    return sharded_jsonl(out_file, [p.id for p in prompts], shard, work)


def _sample_chunk(generator: Generator, prompts: list[Prompt], n: int, seeds: list[int]) -> dict[str, list]:
    if not prompts:
        return {}
    if hasattr(generator, "sample_batch"):
        batches = generator.sample_batch([p.text for p in prompts], n, seeds)
    else:
        batches = [generator.sample(p.text, n, s) for p, s in zip(prompts, seeds)]
    return {p.id: b for p, b in zip(prompts, batches)}


def generate_stage(generator: Generator, prompt_set: PromptSet, out_dir: Path, config: GenerateConfig,
                   seed: int, iteration: int, max_prompt_tokens: int,
                   shard: Shard = Shard()) -> dict[str, list[dict]]:
    """Run `generate_language` for every language into out_dir/{lang}.jsonl."""
    return {
        lang: generate_language(generator, prompts, out_dir / f"{lang}.jsonl", config, seed, iteration,
                                max_prompt_tokens, shard)
        for lang, prompts in prompt_set.by_lang.items()
    }
