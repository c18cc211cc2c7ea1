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
from tqdm.auto import tqdm

from icr.config import RewardConfig
from icr.data import JsonlAppender
from icr.distributed import Shard, sharded_jsonl
from icr.languages import language_name
from icr.models import LoadedModel, end_of_turn_ids, prompt_ids, tokenize_exchange
from icr.scoring import ScoreGroup, score_group


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


def sequence_logprobs(lm: LoadedModel, instruction: str, responses: list[str], token_budget: int = 4096):
    """(summed log π(y|x) per response, scored token count per response) under `lm`."""
    exchanges = [tokenize_exchange(lm.tokenizer, instruction, r) for r in responses]
    shared = min(len(p) for p, _ in exchanges)
    prompt = exchanges[0][0][:shared]
    completions = [p[shared:] + c for p, c in exchanges]
    score_from = [len(p) - shared for p, _ in exchanges]
    logps = score_group(lm.model, ScoreGroup(prompt, completions, score_from), token_budget)
    return logps, [len(c) for _, c in exchanges]


def score_responses(
    policy: LoadedModel, reference: LoadedModel, instruction: str, responses: list[str], beta: float,
    token_budget: int = 4096,
) -> dict[str, list]:
    """logp_policy, logp_ref, n_tokens and reward = β·(logp_policy − logp_ref) for each response."""
    logp_policy, n_tokens = sequence_logprobs(policy, instruction, responses, token_budget)
    logp_ref, _ = sequence_logprobs(reference, instruction, responses, token_budget)
    return {
        "logp_policy": logp_policy,
        "logp_ref": logp_ref,
        "n_tokens": n_tokens,
        "reward": [beta * (a - b) for a, b in zip(logp_policy, logp_ref)],
    }


def reward_record(
    generation: dict, english: str, policy: LoadedModel, reference: LoadedModel, config: RewardConfig,
    translator: LoadedModel | None = None,
) -> dict:
    """Score one generation record (all N responses of a prompt) under `config.mode`."""
    item = RewardInput(generation["lang"], generation["prompt"], english, generation["responses"])
    record = {"id": generation["id"], "lang": item.lang, "mode": config.mode, "prompt": item.native,
              "prompt_en": english, "responses": item.responses}
    if generation.get("skipped") or not item.responses:
        return {**record, "skipped": generation.get("skipped", "no responses")}
    scored_texts = item.responses
    if config.mode == "translate":
        if translator is None:
            raise ValueError("reward.mode=translate needs a translator model")
        scored_texts = translate_to_english(translator, item.responses, item.lang, config.translate_max_new_tokens)
        record["translations"] = scored_texts
    instruction = reward_instruction(config.mode, item, config)
    record["reward_prompt"] = instruction
    record.update(score_responses(policy, reference, instruction, scored_texts, config.beta, config.token_budget))
    return record


def reward_language(
    generations: list[dict], english: dict[str, str], out_file: Path, policy: LoadedModel,
    reference: LoadedModel, config: RewardConfig, translator: LoadedModel | None = None,
    shard: Shard = Shard(),
) -> list[dict]:
    """Score every generation record not yet in `out_file` (appending; record k belongs to process
    k % P of P), then rewrite the file in generation order."""
    lang = generations[0]["lang"] if generations else ""

    def work(target: Path, done: set[str]) -> None:
        todo = [g for k, g in enumerate(generations) if shard.owns(k) and g["id"] not in done]
        with JsonlAppender(target) as out:
            for gen in tqdm(todo, desc=f"reward {lang} ({config.mode})", unit="prompt", disable=not todo):
                out.write(reward_record(gen, english[gen["id"]], policy, reference, config, translator))

    return sharded_jsonl(out_file, [g["id"] for g in generations], shard, work)
