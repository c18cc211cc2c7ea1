"""What every sampling backend returns and how a prompt's seed is derived."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Sample:
    text: str
    response_tokens: int  # generated tokens, end-of-turn excluded
    truncated: bool  # hit max_new_tokens before an end-of-turn token


def prompt_seed(seed: int, iteration: int, lang: str, prompt_id: str) -> int:
    """The seed of one prompt's samples: the first 31 bits of sha256('seed|iteration|lang|id')."""
    digest = hashlib.sha256(f"{seed}|{iteration}|{lang}|{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Generator(Protocol):
    def sample_batch(self, instructions: list[str], n: int, seeds: list[int]) -> list[list[Sample]]:
        """n samples for each instruction; instruction i's samples come from streams seeded by seeds[i]."""
        ...

    def prompt_length(self, instruction: str) -> int: ...


def decode_generated(tokenizer, tokens: list[int], stop_ids: list[int]) -> Sample:
    """The sample of one row's generated tokens: cut at the first end-of-turn token (excluded from the
    count); no end-of-turn token means the row hit the token limit (`truncated`)."""
    stops = set(stop_ids)
    end = next((k for k, t in enumerate(tokens) if t in stops), None)
    kept = tokens if end is None else tokens[:end]
    return Sample(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept), end is None)
