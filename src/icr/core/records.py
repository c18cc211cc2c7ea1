"""Typed records: what the stages pass on, each with one on-disk JSON format.

    GenerationRecord   iter_t/generations/{lang}.jsonl   a prompt and its n sampled responses
    RewardRecord       iter_t/rewards/{lang}.jsonl       the same, scored: logp_policy, logp_ref, reward
    TrainingPair       iter_t/pairs.jsonl                chosen/rejected as TRL's conversational messages
    PreferencePair     held-out pairs (reward-accuracy)  chosen/rejected as plain strings, with prompt_en

`to_json` writes the keys in the order the files have always had (the golden test holds them to
it); `from_json` reads them back. `TrainingPair.preference_pair` is the one conversion between
the two pair formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _renamed(record: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """`record` with key `old` (files written before the rename) read as `new`."""
    if old in record and new not in record:
        record = {(new if k == old else k): v for k, v in record.items()}
    return record


def _drop_none(record: dict[str, Any], *optional: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in optional or v is not None}


@dataclass
class GenerationRecord:
    id: str
    lang: str
    prompt: str
    responses: list[str]
    response_tokens: list[int]  # generated tokens per response, end-of-turn excluded
    truncated: list[bool]
    seed: int
    skipped: str | None = None  # why the prompt has no responses (too long)

    def to_json(self) -> dict[str, Any]:
        return _drop_none(dict(self.__dict__), "skipped")

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> GenerationRecord:
        return cls(**_renamed(record, "n_tokens", "response_tokens"))


@dataclass
class RewardRecord:
    """A scored generation record. `reward[i] = β·(logp_policy[i] − logp_ref[i])`, each log-prob
    summed over response i's scored tokens (`scored_tokens[i]` of them, per `reward.score_tokens`:
    what the template writes after the response may count, a first token may not) under
    `reward_prompt`."""

    id: str
    lang: str
    mode: str
    prompt: str
    prompt_en: str
    responses: list[str]
    skipped: str | None = None
    translations: list[str] | None = None  # translate mode: the English texts that were scored
    reward_prompt: str | None = None
    logp_policy: list[float] = field(default_factory=list)
    logp_ref: list[float] = field(default_factory=list)
    scored_tokens: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in ("id", "lang", "mode", "prompt", "prompt_en", "responses")}
        if self.skipped is not None:
            return {**head, "skipped": self.skipped}
        scores = {k: getattr(self, k) for k in ("reward_prompt", "logp_policy", "logp_ref", "scored_tokens", "reward")}
        return {**head, **_drop_none({"translations": self.translations}, "translations"), **scores}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RewardRecord:
        return cls(**_renamed(record, "n_tokens", "scored_tokens"))


def _messages(role: str, content: str) -> list[dict[str, str]]:
    return [{"role": role, "content": content}]


@dataclass
class PreferencePair:
    """A held-out preference pair: the prompt in its language and in English, two answers."""

    id: str
    lang: str
    prompt: str
    prompt_en: str
    chosen: str
    rejected: str

    REQUIRED = ("id", "lang", "prompt", "prompt_en", "chosen", "rejected")

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> PreferencePair:
        """A row whose prompt/chosen/rejected are strings or TRL messages (the last one's content)."""
        return cls(
            **{k: message_text(record[k]) if k in ("prompt", "chosen", "rejected") else record[k] for k in cls.REQUIRED}
        )


def message_text(value: str | list[dict[str, str]]) -> str:
    """A turn given as a string or as TRL messages: the content of the last message."""
    return value[-1]["content"] if isinstance(value, list) else value


def as_messages(value: str | list[dict[str, str]], role: str) -> list[dict[str, str]]:
    """A turn given as a string (one `role` message) or as TRL messages (kept whole)."""
    if isinstance(value, str):
        return _messages(role, value)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def pair_messages(pair: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """(prompt, chosen, rejected) of a TRL preference row as message lists: the whole conversation
    that training and reference log-probs tokenize (`icr.core.chat.pair_tokens`), where a pair's
    *text* (`message_text`, `TrainingPair.from_json`) is each field's last message."""
    return (
        as_messages(pair["prompt"], "user"),
        as_messages(pair["chosen"], "assistant"),
        as_messages(pair["rejected"], "assistant"),
    )


@dataclass
class TrainingPair:
    """A DPO pair as TRL's conversational format stores it, with the scores that chose it."""

    id: str
    lang: str
    prompt: str
    chosen: str
    rejected: str
    prompt_en: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # reward_/score_/len_ chosen and rejected, alpha

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "lang": self.lang,
            "prompt": _messages("user", self.prompt),
            "chosen": _messages("assistant", self.chosen),
            "rejected": _messages("assistant", self.rejected),
            "prompt_en": self.prompt_en,
            **self.scores,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TrainingPair:
        """A row of pairs.jsonl, or any TRL preference row (strings or messages)."""
        texts = {k: message_text(record[k]) for k in ("prompt", "chosen", "rejected")}
        scores = {k: v for k, v in record.items() if k not in ("id", "lang", "prompt_en", *texts)}
        return cls(str(record["id"]), record["lang"], **texts, prompt_en=record.get("prompt_en"), scores=scores)

    def preference_pair(self) -> PreferencePair:
        return PreferencePair(
            self.id, self.lang, self.prompt, self.prompt_en or self.prompt, self.chosen, self.rejected
        )
