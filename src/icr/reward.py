"""Stage 2, reward: the implicit reward of an English DPO model, applied across languages.

    r(x, y) = β · (log π(y | x) − log π_ref(y | x))

where π is the current policy (π_dpo at iteration 0) and log π(y|x) is the summed log-probability
of the response tokens plus the template's end-of-turn token(s), exactly the tokens DPO trains on
(`icr.models.tokenize_exchange`). What x is depends on the rewarding mode (`REWARD_MODES`):

* crosslingual (ICR): the *English* instruction plus "answer only in <language>" (plain English
  instruction for English responses): the English DPO model judges in the setting it was aligned in;
* multilingual: the native-language instruction the response was sampled from;
* translate: the response is first translated to English (greedy), then scored under the plain
  English instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from icr.config import RewardConfig
from icr.data import JsonlAppender
from icr.distributed import Shard, owned_chunks, sharded_jsonl
from icr.languages import language_name
from icr.models import LoadedModel, end_of_turn_ids, prompt_ids, tokenize_exchange
from icr.progress import progress
from icr.scoring import ScoreGroup, score_groups


@dataclass
class RewardInput:
    """What a rewarding mode sees: the prompt in both languages and the responses."""

    lang: str
    native: str
    english: str
    responses: list[str]


def crosslingual_instruction(item: RewardInput, config: RewardConfig) -> str:
    if item.lang == "en":
        return item.english
    return config.crosslingual_template.format(instruction=item.english, language=language_name(item.lang))


REWARD_MODES: dict[str, Callable[[RewardInput, RewardConfig], str]] = {
    "crosslingual": crosslingual_instruction,
    "multilingual": lambda item, config: item.native,
    "translate": lambda item, config: item.english,
}


def reward_instruction(mode: str, item: RewardInput, config: RewardConfig) -> str:
    """The instruction the reward models see for `item` under rewarding `mode`."""
    return REWARD_MODES[mode](item, config)


TRANSLATE_PROMPT = (
    "Translate the following {language} text into English. Reply with the translation only.\n\n{text}"
)


@torch.no_grad()
def translate_to_english(translator: LoadedModel, texts: list[str], lang: str, max_new_tokens: int) -> list[str]:
    """Greedy translation of each text into English with the translator's chat template."""
    if lang == "en":
        return list(texts)
    tok, model = translator.tokenizer, translator.model
    stops = end_of_turn_ids(tok, model)
    out = []
    for text in texts:
        if not text.strip():
            out.append(text)
            continue
        ids = torch.tensor([prompt_ids(tok, TRANSLATE_PROMPT.format(language=language_name(lang), text=text))],
                           device=translator.device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out


def _score_group_for(lm: LoadedModel, instruction: str, responses: list[str]) -> tuple[ScoreGroup, list[int]]:
    """The responses as completions of their shared prompt, and each response's scored token count."""
    exchanges = [tokenize_exchange(lm.tokenizer, instruction, r) for r in responses]
    shared = min(len(p) for p, _ in exchanges)
    group = ScoreGroup(exchanges[0][0][:shared], [p[shared:] + c for p, c in exchanges],
                       [len(p) - shared for p, _ in exchanges])
    return group, [len(c) for _, c in exchanges]


def batch_sequence_logprobs(lm: LoadedModel, items: list[tuple[str, list[str]]], token_budget: int = 4096):
    """For each (instruction, responses): (summed log π(y|x) per response, scored token counts),
    all items scored together (`icr.scoring.score_groups`)."""
    prepared = [_score_group_for(lm, instruction, responses) for instruction, responses in items]
    logps = score_groups(lm.model, [group for group, _ in prepared], token_budget)
    return [(lp, n_tokens) for lp, (_, n_tokens) in zip(logps, prepared)]


def sequence_logprobs(lm: LoadedModel, instruction: str, responses: list[str], token_budget: int = 4096):
    """(summed log π(y|x) per response, scored token count per response) under `lm`."""
    return batch_sequence_logprobs(lm, [(instruction, responses)], token_budget)[0]


def score_response_groups(
    policy: LoadedModel, reference: LoadedModel, items: list[tuple[str, list[str]]], beta: float,
    token_budget: int = 4096,
) -> list[dict[str, list]]:
    """For each (instruction, responses): logp_policy, logp_ref, n_tokens and
    reward = β·(logp_policy − logp_ref) per response."""
    policy_scores = batch_sequence_logprobs(policy, items, token_budget)
    reference_scores = batch_sequence_logprobs(reference, items, token_budget)
    return [{"logp_policy": logp_policy, "logp_ref": logp_ref, "n_tokens": n_tokens,
             "reward": [beta * (a - b) for a, b in zip(logp_policy, logp_ref)]}
            for (logp_policy, n_tokens), (logp_ref, _) in zip(policy_scores, reference_scores)]


def score_responses(
    policy: LoadedModel, reference: LoadedModel, instruction: str, responses: list[str], beta: float,
    token_budget: int = 4096,
) -> dict[str, list]:
    """`score_response_groups` for one instruction."""
    return score_response_groups(policy, reference, [(instruction, responses)], beta, token_budget)[0]


def _prepare_record(generation: dict, english: str, config: RewardConfig,
                    translator: LoadedModel | None) -> tuple[dict, list[str] | None]:
    """The record's fields before scoring, and the texts to score (None for a skipped record)."""
    item = RewardInput(generation["lang"], generation["prompt"], english, generation["responses"])
    record = {"id": generation["id"], "lang": item.lang, "mode": config.mode, "prompt": item.native,
              "prompt_en": english, "responses": item.responses}
    if generation.get("skipped") or not item.responses:
        return {**record, "skipped": generation.get("skipped", "no responses")}, None
    scored_texts = item.responses
    if config.mode == "translate":
        if translator is None:
            raise ValueError("reward.mode=translate needs a translator model")
        scored_texts = translate_to_english(translator, item.responses, item.lang, config.translate_max_new_tokens)
        record["translations"] = scored_texts
    record["reward_prompt"] = reward_instruction(config.mode, item, config)
    return record, scored_texts


def reward_records(
    generations: list[dict], english: list[str], policy: LoadedModel, reference: LoadedModel,
    config: RewardConfig, translator: LoadedModel | None = None,
) -> list[dict]:
    """Score generation records (all N responses of each prompt) under `config.mode`, together:
    the responses of all the records share forward passes."""
    prepared = [_prepare_record(g, e, config, translator) for g, e in zip(generations, english)]
    scored = [(record, texts) for record, texts in prepared if texts is not None]
    scores = score_response_groups(policy, reference, [(r["reward_prompt"], texts) for r, texts in scored],
                                   config.beta, config.token_budget)
    for (record, _), score in zip(scored, scores):
        record.update(score)
    return [record for record, _ in prepared]


def reward_record(
    generation: dict, english: str, policy: LoadedModel, reference: LoadedModel, config: RewardConfig,
    translator: LoadedModel | None = None,
) -> dict:
    """Score one generation record (all N responses of a prompt) under `config.mode`."""
    return reward_records([generation], [english], policy, reference, config, translator)[0]


def reward_language(
    generations: list[dict], english: dict[str, str], out_file: Path, policy: LoadedModel,
    reference: LoadedModel, config: RewardConfig, translator: LoadedModel | None = None,
    shard: Shard = Shard(),
) -> list[dict]:
    """Score every generation record not yet in `out_file` (appending), then rewrite the file in
    generation order. Records are scored in fixed chunks of `config.batch_prompts`
    (`icr.distributed.owned_chunks`), so a resumed or sharded run writes what an uninterrupted one would."""
    lang = generations[0]["lang"] if generations else ""

    def work(target: Path, done: set[str]) -> None:
        mine = owned_chunks(generations, config.batch_prompts, shard, done, key=lambda g: g["id"])
        todo = sum(g["id"] not in done for chunk in mine for g in chunk)
        with JsonlAppender(target) as out, progress(todo, f"reward {lang} ({config.mode})",
                                                                     "prompt") as bar:
            for chunk in mine:
                records = reward_records(chunk, [english[g["id"]] for g in chunk], policy, reference, config,
                                         translator)
                for record in records:
                    if record["id"] not in done:
                        out.write(record)
                        bar.update(1)

    return sharded_jsonl(out_file, [g["id"] for g in generations], shard, work)
