"""Rewarding engine: the implicit reward of an English DPO model, applied across languages.

    r(x, y) = β · (log π(y | x) − log π_ref(y | x))

where π is the current policy (π_dpo at iteration 0) and log π(y|x) is the summed log-probability
of the response tokens plus the template's end-of-turn token(s), exactly the tokens DPO trains on
(`icr.engines.scoring.responses.score_responses`); `reward.score_tokens: skip_first` scores the released
scorer's tokens instead (the response minus its first token, plus the end-of-turn token). What x is,
and which text is scored, is the rewarding mode's choice (`STRATEGIES`):

* crosslingual (ICR, paper §3.2): the *English* instruction, preceded inside the user turn by the
  released prefix "Please answer the following instruction using only <language>, ..." (plain
  English instruction for English responses): the English DPO model judges in the setting it was
  aligned in;
* multilingual: the native-language instruction the response was sampled from;
* translate: the response is first translated to English (greedy, with the released scripts'
  translation prompt, by the policy unless `models.translator` is set), then scored under the plain
  English instruction. English responses are not translated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from icr.config import RewardConfig
from icr.core.chat import end_of_turn_ids, prompt_ids
from icr.core.languages import language_name
from icr.core.models import LoadedModel
from icr.core.records import GenerationRecord, RewardRecord
from icr.engines.scoring.responses import score_responses
from icr.engines.scoring.scorer import Scorer


@dataclass
class RewardInput:
    """What a rewarding mode sees: the prompt in both languages and the responses."""

    lang: str
    native: str
    english: str
    responses: list[str]


@dataclass
class Scoring:
    """A mode's decision for one input: the instruction the reward models see, the texts they
    score (one per response) and, in translate mode, the translations those texts are."""

    instruction: str
    texts: list[str]
    translations: list[str] | None = None


class RewardingStrategy(Protocol):
    needs_translator: ClassVar[bool]

    def scoring(self, item: RewardInput) -> Scoring: ...


class CrosslingualRewarding:
    """ICR: the English instruction, asking for an answer in the response's language."""

    needs_translator = False

    def __init__(self, config: RewardConfig, translator: LoadedModel | None = None):
        self.template = config.crosslingual_template

    def instruction(self, item: RewardInput) -> str:
        if item.lang == "en":
            return item.english
        return self.template.format(instruction=item.english, language=language_name(item.lang))

    def scoring(self, item: RewardInput) -> Scoring:
        return Scoring(self.instruction(item), item.responses)


class MultilingualRewarding:
    """The baseline: the native instruction the response answers."""

    needs_translator = False

    def __init__(self, config: RewardConfig, translator: LoadedModel | None = None):
        pass

    def scoring(self, item: RewardInput) -> Scoring:
        return Scoring(item.native, item.responses)


class TranslateRewarding:
    """Translate-then-score: the response in English under the plain English instruction."""

    needs_translator = True

    def __init__(self, config: RewardConfig, translator: LoadedModel | None = None):
        if translator is None:
            raise ValueError("reward.mode=translate needs a translator model")
        self.translator, self.max_new_tokens = translator, config.translate_max_new_tokens

    def scoring(self, item: RewardInput) -> Scoring:
        translations = translate_to_english(self.translator, item.responses, item.lang, self.max_new_tokens)
        return Scoring(item.english, translations, translations)


STRATEGIES: dict[str, type[RewardingStrategy]] = {
    "crosslingual": CrosslingualRewarding,
    "multilingual": MultilingualRewarding,
    "translate": TranslateRewarding,
}


def make_strategy(config: RewardConfig, translator: LoadedModel | None = None) -> RewardingStrategy:
    return STRATEGIES[config.mode](config, translator)


# The released translation prompt (utils/trans_prompts.py) and the primer the released scripts put
# after the generation prompt (utils/translate.py, PRIMER).
TRANSLATE_PROMPT = (
    "Please translate the following sentences into {lang}. The input sentences are wrapped by <sentence> and "
    "</sentence>:\n\n<sentence>\n{text}\n</sentence>\n\nThe translated result should be wrapped by <translated> "
    "and </translated>.\n"
)
TRANSLATE_PRIMER = "<translated>\n"
_TRANSLATED = re.compile(r"<translated>(.*?)</translated>", re.DOTALL)


def parse_translation(generated: str) -> str:
    """The text between <translated> tags of primer + generation (utils/batch_translate.py's rule),
    else the generation with a stray opening/closing tag removed."""
    text = TRANSLATE_PRIMER + generated.strip()
    match = _TRANSLATED.search(text)
    if match:
        return match.group(1).strip()
    text = text.strip().removeprefix("<translated>").strip()
    return text.removesuffix("</translated>").strip()


@torch.no_grad()
def translate_to_english(translator: LoadedModel, texts: list[str], lang: str, max_new_tokens: int) -> list[str]:
    """Greedy translation of each text into English with the translator's chat template; English
    texts are returned as they are."""
    if lang == "en":
        return list(texts)
    tok, model = translator.tokenizer, translator.model
    stops = end_of_turn_ids(tok, model)
    out = []
    for text in texts:
        if not text.strip():
            out.append(text)
            continue
        prompt = prompt_ids(tok, TRANSLATE_PROMPT.format(lang="English", text=text))
        prompt += tok.encode(TRANSLATE_PRIMER, add_special_tokens=False)
        ids = torch.tensor([prompt], device=translator.device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
        )
        out.append(parse_translation(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)))
    return out


def implicit_rewards(
    policy: Scorer, reference: Scorer, items: list[tuple[str, list[str]]], config: RewardConfig
) -> list[dict[str, list]]:
    """For each (instruction, texts): logp_policy, logp_ref, scored_tokens and
    reward = β·(logp_policy − logp_ref) per text, all items scored together."""
    policy_scores = score_responses(policy, items, config.score_tokens)
    reference_scores = score_responses(reference, items, config.score_tokens)
    return [
        {
            "logp_policy": logp_policy,
            "logp_ref": logp_ref,
            "scored_tokens": scored_tokens,
            "reward": [config.beta * (a - b) for a, b in zip(logp_policy, logp_ref)],
        }
        for (logp_policy, scored_tokens), (logp_ref, _) in zip(policy_scores, reference_scores)
    ]


def reward_inputs(
    items: list[RewardInput],
    policy: Scorer,
    reference: Scorer,
    config: RewardConfig,
    strategy: RewardingStrategy,
) -> list[tuple[Scoring, dict[str, list]]]:
    """Each input's scoring under `strategy` and its implicit rewards (see `implicit_rewards`)."""
    scorings = [strategy.scoring(item) for item in items]
    rewards = implicit_rewards(policy, reference, [(s.instruction, s.texts) for s in scorings], config)
    return list(zip(scorings, rewards))


def reward_records(
    generations: list[GenerationRecord],
    english: list[str],
    policy: Scorer,
    reference: Scorer,
    config: RewardConfig,
    strategy: RewardingStrategy,
) -> list[RewardRecord]:
    """Score generation records (all n responses of each prompt), together: the responses of all
    the records share forward passes. A skipped generation is passed on with its reason, unscored."""
    records, scored = [], []
    for generation, prompt_en in zip(generations, english):
        record = RewardRecord(
            generation.id, generation.lang, config.mode, generation.prompt, prompt_en, generation.responses
        )
        if generation.skipped or not generation.responses:
            record.skipped = generation.skipped or "no responses"
        else:
            scored.append(record)
        records.append(record)
    inputs = [RewardInput(r.lang, r.prompt, r.prompt_en, r.responses) for r in scored]
    for record, (scoring, reward) in zip(scored, reward_inputs(inputs, policy, reference, config, strategy)):
        fill_scores(record, scoring, reward)
    return records


def fill_scores(record: RewardRecord, scoring: Scoring, reward: dict[str, list]) -> RewardRecord:
    """Set a record's scored fields from one of `reward_inputs`' (scoring, rewards) results."""
    record.translations, record.reward_prompt = scoring.translations, scoring.instruction
    record.logp_policy, record.logp_ref = reward["logp_policy"], reward["logp_ref"]
    record.scored_tokens, record.reward = reward["scored_tokens"], reward["reward"]
    return record
