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
from tqdm.auto import tqdm

from icr.config import GenerateConfig
from icr.data import JsonlAppender, Prompt, PromptSet, read_jsonl, write_jsonl_atomic
from icr.models import LoadedModel, end_of_turn_ids, prompt_ids

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


class HFGenerator:
    """transformers backend: prefill the prompt once, expand its cache to n rows, sample."""

    def __init__(self, lm: LoadedModel, config: GenerateConfig):
        self.lm, self.config = lm, config
        self.stop_ids = end_of_turn_ids(lm.tokenizer, lm.model)

    def prompt_length(self, instruction: str) -> int:
        return len(prompt_ids(self.lm.tokenizer, instruction))

    @torch.no_grad()
    def sample(self, instruction: str, n: int, seed: int) -> list[Sample]:
        model, tok, cfg = self.lm.model, self.lm.tokenizer, self.config
        ids = torch.tensor([prompt_ids(tok, instruction)], device=self.lm.device)
        kwargs = {}
        if ids.shape[1] > 1:  # the last prompt token is fed by generate(); the rest is cached once
            cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
            cache.batch_repeat_interleave(n)
            kwargs["past_key_values"] = cache
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids.repeat(n, 1),
            attention_mask=torch.ones(n, ids.shape[1], dtype=torch.long, device=ids.device),
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=tok.pad_token_id,
            **kwargs,
        )
        return [self._decode(row) for row in out[:, ids.shape[1] :].tolist()]

    def _decode(self, tokens: list[int]) -> Sample:
        stops = set(self.stop_ids)
        end = next((k for k, t in enumerate(tokens) if t in stops), None)
        kept = tokens if end is None else tokens[:end]
        text = self.lm.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return Sample(text=text, n_tokens=len(kept), truncated=end is None)


class VLLMGenerator:
    """vLLM backend (GPU): prefix caching shares the prompt among the n samples."""

    def __init__(self, model_path: str, config: GenerateConfig, dtype: str = "auto", trust_remote_code=False):
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
    shard: tuple[int, int] = (0, 1),
) -> list[dict]:
    """Sample for every prompt not yet in `out_file` (appending), then rewrite it in prompt order.

    A prompt longer than `max_prompt_tokens` is not truncated: it gets a record with no responses
    and a `skipped` reason, so it is visible downstream and never silently lost."""
    done = {r["id"] for r in read_jsonl(out_file, repair=True)}
    rank, world = shard
    todo = [p for k, p in enumerate(prompts) if k % world == rank and p.id not in done]
    with JsonlAppender(out_file) as out:
        for prompt in tqdm(todo, desc=f"generate {prompts[0].lang if prompts else ''}", unit="prompt",
                           initial=len(done), total=len(done) + len(todo)):
            p_seed = prompt_seed(seed, iteration, prompt.lang, prompt.id)
            n_prompt = generator.prompt_length(prompt.text)
            if n_prompt > max_prompt_tokens:
                log.warning("%s/%s: prompt has %d tokens > %d: skipped", prompt.lang, prompt.id, n_prompt,
                            max_prompt_tokens)
                record = generation_record(prompt, [], p_seed)
                record["skipped"] = f"prompt has {n_prompt} tokens > data.max_prompt_tokens={max_prompt_tokens}"
            else:
                record = generation_record(prompt, generator.sample(prompt.text, config.n, p_seed), p_seed)
            out.write(record)
    return finalize_in_order(out_file, [p.id for p in prompts])


def finalize_in_order(path: Path, order: list[str]) -> list[dict]:
    """Rewrite a stage file in canonical id order (atomically), so the bytes do not depend on
    where a run was interrupted or how work was sharded."""
    records = {r["id"]: r for r in read_jsonl(path, repair=True)}
    ordered = [records[i] for i in order if i in records]
    write_jsonl_atomic(path, ordered)
    return ordered


def generate_stage(generator: Generator, prompt_set: PromptSet, out_dir: Path, config: GenerateConfig,
                   seed: int, iteration: int, max_prompt_tokens: int) -> dict[str, list[dict]]:
    """Run `generate_language` for every language into out_dir/{lang}.jsonl."""
    return {
        lang: generate_language(generator, prompts, out_dir / f"{lang}.jsonl", config, seed, iteration,
                                max_prompt_tokens)
        for lang, prompts in prompt_set.by_lang.items()
    }
