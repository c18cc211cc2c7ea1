"""What every judge shares: the prompt, the verdict rule, the request and result types.

Both backends see the same multilingual prompt (`judge_messages`) and apply the same verdict rule:
the judge's log-probabilities of the verdict tokens 'A' and 'B' at the first answer position give
P(A) = p_A / (p_A + p_B) (alpaca_eval's weighted judges do the same with 'm'/'M'); a judge whose
endpoint returns no log-probabilities falls back to its sampled verdict (P = 1 or 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from icr.core.errors import IcrError
from icr.core.languages import language_name

PROMPT_VERSION = "icr-pairwise-v1"
VERDICTS = ("A", "B")
SYSTEM_PROMPT = (
    "You are an impartial expert judge of AI assistants, fluent in every language. You compare two "
    "answers to the same user instruction and decide which one the user would prefer."
)
USER_TEMPLATE = """The user wrote the following instruction in {language}.

<instruction>
{instruction}
</instruction>

<answer_A>
{first}
</answer_A>

<answer_B>
{second}
</answer_B>

Which answer follows the instruction better? Judge helpfulness, correctness, depth and clarity. The \
user expects an answer in {language}: an answer in another language is a serious flaw, unless the \
instruction asks for that language. Do not let the order of the answers, their length or their \
formatting sway you.

Reply with one letter only: A if answer A is better, B if answer B is better."""


class JudgeError(IcrError, RuntimeError):
    """A judge that cannot work (bad endpoint, refused request, unusable model)."""


@dataclass(frozen=True)
class JudgeRequest:
    instruction: str
    lang: str
    first: str  # shown as answer A
    second: str  # shown as answer B


@dataclass
class Judgement:
    p_first: float | None  # P(answer A is better); None = no usable verdict
    rule: str  # 'logprobs' or 'sampled'
    raw: str = ""  # the judge's reply (sampled token)
    served_model: str = ""  # model name/version the endpoint reported (or the local fingerprint)
    usage: dict[str, int] = field(default_factory=dict)


def judge_messages(req: JudgeRequest) -> list[dict[str, str]]:
    user = USER_TEMPLATE.format(
        language=language_name(req.lang),
        instruction=req.instruction.strip(),
        first=req.first.strip(),
        second=req.second.strip(),
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def verdict_probability(token_logprobs: list[tuple[str, float]]) -> float | None:
    """P(A) from (token, log-probability) candidates: the mass of tokens reading 'A' over that of
    'A' and 'B' (surrounding spaces ignored); None when neither appears."""
    mass = dict.fromkeys(VERDICTS, 0.0)
    for token, logprob in token_logprobs:
        key = token.strip()
        if key in mass and logprob is not None and math.isfinite(logprob):
            mass[key] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None


def sampled_verdict(text: str) -> float | None:
    """1.0 for a reply starting with 'A', 0.0 for 'B', None otherwise."""
    head = text.strip().lstrip("*\"'([").upper()[:1]
    return {"A": 1.0, "B": 0.0}.get(head)


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """Rough prompt size for cost estimates: UTF-8 bytes / 3 (conservative for non-Latin scripts)."""
    return sum(len(m["content"].encode("utf-8")) for m in messages) // 3 + 8 * len(messages)


class Judge(Protocol):
    judge_id: str  # identity in cache keys (backend, model, endpoint, weights)

    def messages(self, req: JudgeRequest) -> list[dict[str, str]]:
        """The chat messages the judge is shown for `req` (they key its cache entry)."""
        ...

    def describe(self) -> dict[str, Any]: ...

    def preflight(self) -> str: ...

    def judge_many(self, requests: list[JudgeRequest], on_done: Callable[[int, Judgement], None]) -> None: ...
