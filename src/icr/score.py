"""`icr score`: the implicit reward of every response of a dataset, with the run's fast scorer.

    r(x, y) = β · (log π(y | x) − log π_ref(y | x))

Input rows are TRL's preference format (prompt, chosen, rejected) or its prompt-completion format
(prompt, completion); a prompt may be a string or a conversational list of messages (its last
message is the instruction), a response a string or a list of assistant messages. Optional
columns: `id` (else the row number), the language (`language_field`, else `--language`),
`prompt_en` (the English instruction crosslingual mode shows for a non-English row; an English
row's own prompt otherwise).

The output is one JSON line per input row, the reward stage's record format
(`icr.core.records.RewardRecord`): `responses` (chosen then rejected, or the completion),
`reward_prompt`, `logp_policy`, `logp_ref`, `scored_tokens`, `reward`, one value per response. It is
written through `icr.runtime.jobs.run_job`: fixed chunks of `reward.batch_prompts` rows, resumed
after an interruption, sharded under `accelerate launch`, the same file whatever happened.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icr.config import ModelsConfig, RewardConfig, ScoreConfig
from icr.core.distributed import Shard, current_shard
from icr.core.errors import DataError
from icr.core.languages import check_language
from icr.core.records import RewardRecord, message_text
from icr.core.tables import load_table, require_columns
from icr.engines.rewarding import STRATEGIES, RewardInput, fill_scores, make_strategy, reward_inputs
from icr.engines.scoring.scorer import Scorer
from icr.runtime.jobs import run_job

FORMATS = {"pairs": ("prompt", "chosen", "rejected"), "responses": ("prompt", "completion")}


@dataclass(frozen=True)
class ScoreItem:
    """One row to score: its key, language, instruction in both languages and its responses."""

    id: str
    lang: str
    prompt: str
    prompt_en: str | None
    responses: list[str]


def _text(value: Any, where: str, column: str) -> str:
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        value = message_text(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: {column!r} must be a string or a list of messages, got {type(value).__name__}")
    return value


def _unique_keys(rows: list[dict[str, Any]], languages: list[str]) -> list[str]:
    """Row keys: the `id` column when unique, else language/id (one pair per prompt and language,
    as a run's pairs.jsonl), else an error; the row number without an `id` column."""
    if not rows or "id" not in rows[0]:
        return [str(i) for i in range(len(rows))]
    for keys in ([str(r["id"]) for r in rows], [f"{lang}/{r['id']}" for r, lang in zip(rows, languages)]):
        if len(set(keys)) == len(keys):
            return keys
    duplicate = next(k for k, n in Counter(keys).items() if n > 1)
    raise DataError(f"duplicate id {duplicate!r} (ids must be unique per language)")


def score_items_from_rows(rows: list[dict[str, Any]], kind: str, source: str, config: ScoreConfig) -> list[ScoreItem]:
    """Rows of one of `FORMATS` as score items, every column checked before any model loads."""
    require_columns(rows, list(FORMATS[kind]), source)
    if config.language is None:
        require_columns(rows, [config.language_field], source, "--language or --language_field")
    languages = [check_language(str(row.get(config.language_field) or config.language)) for row in rows]
    items = []
    for key, lang, row in zip(_unique_keys(rows, languages), languages, rows):
        where = f"{source}: id {key}"
        responses = [_text(row[c], where, c) for c in FORMATS[kind][1:]]
        prompt_en = row.get("prompt_en")
        items.append(ScoreItem(key, lang, _text(row["prompt"], where, "prompt"), prompt_en, responses))
    return items


def read_score_items(config: ScoreConfig) -> list[ScoreItem]:
    kind = "pairs" if config.pairs is not None else "responses"
    rows = load_table(config.source, split=config.split, config=config.dataset_config)
    if not rows:
        raise DataError(f"{config.source}: no rows")
    return score_items_from_rows(rows, kind, config.source, config)


def english_instruction(item: ScoreItem, mode: str) -> str:
    """The English instruction a mode other than multilingual shows: `prompt_en`, or an English row's prompt."""
    if item.prompt_en is not None:
        return _text(item.prompt_en, f"id {item.id}", "prompt_en")
    if item.lang == "en" or mode == "multilingual":
        return item.prompt
    raise DataError(
        f"id {item.id} ({item.lang}): {mode} mode scores against the English instruction: "
        "add a prompt_en column, or use --mode multilingual"
    )


def score_items(
    items: list[ScoreItem], policy: Scorer, reference: Scorer, config: RewardConfig, strategy
) -> list[dict[str, Any]]:
    """Score records (`RewardRecord.to_json`) of `items`, scored together (one call of the scorer)."""
    english = [english_instruction(item, config.mode) for item in items]
    inputs = [RewardInput(item.lang, item.prompt, en, item.responses) for item, en in zip(items, english)]
    return [
        fill_scores(RewardRecord(item.id, item.lang, config.mode, item.prompt, en, item.responses), *scored).to_json()
        for item, en, scored in zip(items, english, reward_inputs(inputs, policy, reference, config, strategy))
    ]


def load_scoring_models(models: ModelsConfig, needs_translator: bool):
    """(policy, reference, translator) loaded with `models`' device, dtype and trust settings; the
    translator (translate mode only) is `models.translator`, else the policy, as the released scripts."""

    policy, reference = models.load(models.policy), models.load(models.reference)
    translator = None
    if needs_translator:
        translator = models.load(models.translator) if models.translator else policy
    return policy, reference, translator


def score_file(config: ScoreConfig, shard: Shard | None = None) -> list[dict[str, Any]]:
    """Score every row of `config.source` not yet in `config.output`; return the whole file."""
    items = read_score_items(config)
    reward = config.reward.model_copy(update={"mode": config.mode})
    for item in items:  # a missing English instruction is found before any model loads
        english_instruction(item, reward.mode)
    policy, reference, translator = load_scoring_models(config.models, STRATEGIES[reward.mode].needs_translator)
    strategy = make_strategy(reward, translator)
    policy, reference = Scorer.of(policy, reward.token_budget), Scorer.of(reference, reward.token_budget)
    return run_job(
        Path(config.output),
        items,
        lambda item: item.id,
        reward.batch_prompts,
        lambda chunk: score_items(chunk, policy, reference, reward, strategy),
        shard or current_shard(),
        f"score ({reward.mode})",
        "row",
    )
