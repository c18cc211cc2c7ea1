"""The implicit reward (`icr.engines.rewarding`): r = β·(log π(y|x) − log π_ref(y|x)), the rewarding modes and
their prompts as released, skipped generations, and the reward stage writing in generation order."""

from __future__ import annotations

import numpy as np
import pytest

from icr.config import RewardConfig
from icr.core.chat import tokenize_exchange
from icr.core.records import GenerationRecord
from icr.engines.rewarding import STRATEGIES, RewardInput, implicit_rewards, make_strategy
from icr.engines.rewarding import reward_records as engine_reward_records
from icr.engines.scoring.responses import score_responses as engine_score_responses
from icr.engines.scoring.scorer import Scorer, reference_logprobs
from icr.stages.reward import reward_language

BUDGET = RewardConfig().token_budget

ENGLISH = "Name two colours of the rainbow."
SPANISH = "Nombra dos colores del arcoíris."
RESPONSES_ES = ["Rojo y azul.", "El arcoíris tiene muchos colores, por ejemplo el verde y el amarillo.", "Rojo"]
RESPONSES_EN = ["Red and blue.", "Green", "A rainbow has red, orange, yellow, green, blue and violet."]


def prefixed(language: str, instruction: str) -> str:
    """The released scripts' crosslingual user turn (utils/inference.py PREFIX + the instruction), typed out."""
    return (
        f"Please answer the following instruction using only {language}, unless explicitly instructed to "
        f"respond in a different language.\n\n{instruction}"
    )


def plain_logp(lm, instruction: str, response: str) -> float:
    """Summed log-probability of TRL's completion tokens, by the plain full-softmax forward."""
    p, c = tokenize_exchange(lm.tokenizer, instruction, response)
    return sum(reference_logprobs(lm.model, p, c))


def scorers(policy, reference, config: RewardConfig):
    return Scorer.of(policy, config.token_budget), Scorer.of(reference, config.token_budget)


def reward_records(
    gens: list[dict], english: list[str], policy, reference, config: RewardConfig, translator=None
) -> list[dict]:
    records = [GenerationRecord.from_json(g) for g in gens]
    return [
        r.to_json()
        for r in engine_reward_records(
            records, english, *scorers(policy, reference, config), config, make_strategy(config, translator)
        )
    ]


def reward_record(gen: dict, english: str, policy, reference, config: RewardConfig, translator=None) -> dict:
    return reward_records([gen], [english], policy, reference, config, translator)[0]


def score_responses(
    policy, reference, instruction: str, responses: list[str], beta: float, score_tokens: str = "all"
) -> dict:
    config = RewardConfig(beta=beta, score_tokens=score_tokens)
    return implicit_rewards(*scorers(policy, reference, config), [(instruction, responses)], config)[0]


def sequence_logprobs(lm, instruction: str, responses: list[str]):
    return engine_score_responses(Scorer.of(lm, BUDGET), [(instruction, responses)])[0]


def reward_instruction(mode: str, item: RewardInput, config: RewardConfig) -> str:
    return make_strategy(config.model_copy(update={"mode": mode})).scoring(item).instruction


def render_prompt(tokenizer, instruction: str) -> str:
    """The text the model sees before it answers `instruction` (its chat template)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )


def generation(lang: str, native: str, responses: list[str], pid: str = "p1") -> dict:
    return {
        "id": pid,
        "lang": lang,
        "prompt": native,
        "responses": responses,
        "n_tokens": [1] * len(responses),
        "truncated": [False] * len(responses),
        "seed": 0,
    }


# ---------------------------------------------------------------- the reward itself


def test_policy_equal_to_reference_gives_zero_reward(tiny_lm):
    for mode in ("crosslingual", "multilingual"):
        rec = reward_record(
            generation("es", SPANISH, RESPONSES_ES), ENGLISH, tiny_lm, tiny_lm, RewardConfig(mode=mode, beta=0.5)
        )
        assert rec["reward"] == [0.0] * len(RESPONSES_ES)
        assert all(lp < 0 for lp in rec["logp_policy"])  # the scores themselves are real log-probs


def test_reward_is_beta_times_logratio_and_linear_in_beta(tiny_lm, tiny_ref_lm):
    small = score_responses(tiny_lm, tiny_ref_lm, ENGLISH, RESPONSES_EN, beta=0.1)
    large = score_responses(tiny_lm, tiny_ref_lm, ENGLISH, RESPONSES_EN, beta=0.7)
    assert small["logp_policy"] == large["logp_policy"] and small["logp_ref"] == large["logp_ref"]
    for k in range(len(RESPONSES_EN)):
        diff = small["logp_policy"][k] - small["logp_ref"][k]
        assert abs(diff) > 1e-3  # different models: a non-trivial reward
        assert small["reward"][k] == pytest.approx(0.1 * diff, rel=1e-12)
        assert large["reward"][k] == pytest.approx(7 * small["reward"][k], rel=1e-9)


def test_logprobs_are_those_of_the_trl_completion(tiny_lm, tiny_ref_lm):
    """Each response is scored on its own TRL completion (incl. <|im_end|>), even when several
    responses share one prompt pass and one of them changes the prompt's last token."""
    responses = RESPONSES_EN + ["\n\nStarts with blank lines", "  two spaces"]
    out = score_responses(tiny_lm, tiny_ref_lm, ENGLISH, responses, beta=1.0)
    for k, r in enumerate(responses):
        assert out["logp_policy"][k] == pytest.approx(plain_logp(tiny_lm, ENGLISH, r), abs=2e-3)
        assert out["logp_ref"][k] == pytest.approx(plain_logp(tiny_ref_lm, ENGLISH, r), abs=2e-3)
        assert out["scored_tokens"][k] == len(tokenize_exchange(tiny_lm.tokenizer, ENGLISH, r)[1])


# ---------------------------------------------------------------- rewarding modes


def test_crosslingual_prompt_is_english_with_answer_in_language(tiny_lm, tiny_ref_lm):
    cfg = RewardConfig(mode="crosslingual", beta=1.0)
    rec = reward_record(generation("es", SPANISH, RESPONSES_ES), ENGLISH, tiny_lm, tiny_ref_lm, cfg)
    assert rec["reward_prompt"] == prefixed("Spanish", ENGLISH)
    assert rec["prompt"] == SPANISH and rec["prompt_en"] == ENGLISH and rec["mode"] == "crosslingual"
    want = sequence_logprobs(tiny_lm, rec["reward_prompt"], RESPONSES_ES)[0]
    np.testing.assert_allclose(rec["logp_policy"], want, atol=1e-6)
    native = sequence_logprobs(tiny_lm, SPANISH, RESPONSES_ES)[0]
    assert max(abs(a - b) for a, b in zip(rec["logp_policy"], native)) > 1e-3  # the prompt matters

    en = reward_record(generation("en", ENGLISH, RESPONSES_EN), ENGLISH, tiny_lm, tiny_ref_lm, cfg)
    assert en["reward_prompt"] == ENGLISH
    np.testing.assert_allclose(en["logp_policy"], sequence_logprobs(tiny_lm, ENGLISH, RESPONSES_EN)[0], atol=1e-6)


# Meta-Llama-3-8B-Instruct's chat template (tokenizer_config.json), applied to the SmolLM2 tokenizer
# with Llama-3's BOS: only the rendering is under test.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def test_crosslingual_prompt_renders_as_released_under_llama3_template(smollm_path):
    from icr.core.models import load_tokenizer

    tok = load_tokenizer(smollm_path)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
    tok.chat_template = LLAMA3_CHAT_TEMPLATE
    item = RewardInput("de", "Nenne zwei Farben.", ENGLISH, ["Rot"])
    rendered = render_prompt(tok, reward_instruction("crosslingual", item, RewardConfig()))
    # the released 'llama3_without_system_prompt' SFT_PROMPT (utils/inference.py) filled by
    # cross_implicit_reward_prompt (utils/compute_reward_score.py): the prefix inside the user turn
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Please answer the following instruction using only German, unless explicitly instructed to respond in a "
        "different language.\n\nName two colours of the rainbow.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    english = RewardInput("en", ENGLISH, ENGLISH, ["Red"])
    assert render_prompt(tok, reward_instruction("crosslingual", english, RewardConfig())) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nName two colours of the rainbow.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_crosslingual_prompt_renders_inside_the_smollm2_user_turn(tokenizer):
    item = RewardInput("fr", "Nomme deux couleurs.", ENGLISH, ["Rouge"])
    assert render_prompt(tokenizer, reward_instruction("crosslingual", item, RewardConfig())) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nPlease answer the following instruction using only French, unless explicitly instructed "
        "to respond in a different language.\n\nName two colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n"
    )


# Llama-3's template shape (header tokens around the role, "\n\n", an end-of-turn token and nothing
# after it), written with special tokens the SmolLM2 vocabulary has, so the tiny models can score it:
# <repo_name> = <|begin_of_text|>, <filename>/<file_sep> = <|start_header_id|>/<|end_header_id|>,
# <issue_closed> = <|eot_id|>.
LLAMA3_STYLE_TEMPLATE = (
    "<repo_name>{% for m in messages %}<filename>{{ m['role'] }}<file_sep>\n\n{{ m['content'] }}<issue_closed>"
    "{% endfor %}{% if add_generation_prompt %}<filename>assistant<file_sep>\n\n{% endif %}"
)
RELEASED_EOS = {"chatml": "<|im_end|>", "llama3-style": "<issue_closed>"}


def released_log_prob(lm, instruction: str, response: str, eos: str) -> tuple[list[int], float]:
    """An independent copy of the released scorer (utils/compute_reward_score.py, prepare_data and
    compute_score) for one response: the rendered prompt + response + EOS tokenized as one string,
    positions masked (prompt, padding, EOS), then the log-probs of the labels at the kept positions."""
    import torch

    tok = lm.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt + response + eos, return_tensors="pt", add_special_tokens=False)["input_ids"]
    mask = torch.ones_like(ids)
    mask[0, : tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].size(1)] = 0
    mask[0, ids[0] == tok.pad_token_id] = 0
    mask[0, ids[0] == tok.encode(eos, add_special_tokens=False)[0]] = 0
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits.float()[:, :-1, :]
    labels = ids[:, 1:]
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    kept = mask[:, :-1].bool()
    return labels[kept].tolist(), float((log_probs * mask[:, :-1]).sum())


@pytest.fixture(params=["chatml", "llama3-style"])
def templated(request, tiny_lm, tiny_ref_lm):
    """The tiny policy and reference under SmolLM2's own ChatML template, or a Llama-3-style one."""
    originals = [lm.tokenizer.chat_template for lm in (tiny_lm, tiny_ref_lm)]
    if request.param == "llama3-style":
        for lm in (tiny_lm, tiny_ref_lm):
            lm.tokenizer.chat_template = LLAMA3_STYLE_TEMPLATE
    yield request.param, tiny_lm, tiny_ref_lm
    for lm, original in zip((tiny_lm, tiny_ref_lm), originals):
        lm.tokenizer.chat_template = original


def test_skip_first_scores_the_released_tokens_and_sums(templated):
    """`score_tokens: skip_first` = the released scorer token for token: the response minus its
    first token, plus the end-of-turn token, nothing after it (not ChatML's trailing newline)."""
    name, policy, reference = templated
    eos = RELEASED_EOS[name]
    skip = score_responses(policy, reference, ENGLISH, RESPONSES_EN, beta=1.0, score_tokens="skip_first")
    for k, response in enumerate(RESPONSES_EN):
        labels, policy_sum = released_log_prob(policy, ENGLISH, response, eos)
        _, ref_sum = released_log_prob(reference, ENGLISH, response, eos)
        assert labels[-1] == policy.tokenizer.convert_tokens_to_ids(eos)
        assert skip["scored_tokens"][k] == len(labels)
        assert skip["logp_policy"][k] == pytest.approx(policy_sum, abs=2e-4)
        assert skip["reward"][k] == pytest.approx(policy_sum - ref_sum, abs=2e-4)
        from icr.core.chat import released_exchange

        assert released_exchange(policy.tokenizer, ENGLISH, response)[1][1:] == labels
    cfg = RewardConfig(beta=1.0, score_tokens="skip_first")
    rec = reward_record(generation("en", ENGLISH, RESPONSES_EN), ENGLISH, policy, reference, cfg)
    np.testing.assert_allclose(rec["reward"], skip["reward"], atol=1e-6)  # the stage honours the setting


def test_all_scores_trls_completion_tokens(templated):
    """`score_tokens: all` = what DPO trains on: TRL's completion tokens, template suffix included."""
    _, policy, reference = templated
    full = score_responses(policy, reference, ENGLISH, RESPONSES_EN, beta=1.0)
    for k, response in enumerate(RESPONSES_EN):
        assert full["scored_tokens"][k] == len(tokenize_exchange(policy.tokenizer, ENGLISH, response)[1])
        assert full["logp_policy"][k] == pytest.approx(plain_logp(policy, ENGLISH, response), abs=2e-4)


def test_translation_is_read_between_the_released_tags():
    from icr.engines.rewarding import TRANSLATE_PROMPT, parse_translation

    assert parse_translation("Red and blue.\n</translated>\nmore") == "Red and blue."
    assert parse_translation("Red and blue.") == "Red and blue."  # no closing tag: the whole generation
    assert parse_translation("  </translated>") == ""
    assert "{lang}" in TRANSLATE_PROMPT and "<sentence>\n{text}\n</sentence>" in TRANSLATE_PROMPT


def test_translate_defaults_as_released():
    from icr.config import ModelsConfig

    assert ModelsConfig().translator is None  # None = the policy of the iteration (pipeline.run_reward)
    assert RewardConfig().translate_max_new_tokens >= 2400  # whole responses of the paper's length limit


def test_crosslingual_template_is_configurable():
    cfg = RewardConfig(crosslingual_template="[{language}] {instruction}")
    item = RewardInput("de", "Hallo?", "Hello?", ["Hallo"])
    assert reward_instruction("crosslingual", item, cfg) == "[German] Hello?"


def test_multilingual_prompt_is_the_native_instruction(tiny_lm, tiny_ref_lm):
    cfg = RewardConfig(mode="multilingual", beta=1.0)
    rec = reward_record(generation("es", SPANISH, RESPONSES_ES), ENGLISH, tiny_lm, tiny_ref_lm, cfg)
    assert rec["reward_prompt"] == SPANISH
    np.testing.assert_allclose(rec["logp_policy"], sequence_logprobs(tiny_lm, SPANISH, RESPONSES_ES)[0], atol=1e-6)
    np.testing.assert_allclose(rec["logp_ref"], sequence_logprobs(tiny_ref_lm, SPANISH, RESPONSES_ES)[0], atol=1e-6)


def test_translate_mode_stores_and_scores_translations(tiny_lm, tiny_ref_lm):
    cfg = RewardConfig(mode="translate", beta=1.0, translate_max_new_tokens=4)
    rec = reward_record(generation("es", SPANISH, RESPONSES_ES), ENGLISH, tiny_lm, tiny_ref_lm, cfg, translator=tiny_lm)
    assert rec["reward_prompt"] == ENGLISH
    assert len(rec["translations"]) == len(RESPONSES_ES)
    assert all(isinstance(t, str) for t in rec["translations"])
    assert rec["translations"] != RESPONSES_ES  # a (random) model translated them
    assert rec["responses"] == RESPONSES_ES  # the originals are kept for the pairs
    np.testing.assert_allclose(
        rec["logp_policy"], sequence_logprobs(tiny_lm, ENGLISH, rec["translations"])[0], atol=1e-6
    )
    # English responses are not translated
    en = reward_record(generation("en", ENGLISH, RESPONSES_EN), ENGLISH, tiny_lm, tiny_ref_lm, cfg, translator=tiny_lm)
    assert en["translations"] == RESPONSES_EN
    with pytest.raises(ValueError, match="translator"):
        reward_record(generation("es", SPANISH, RESPONSES_ES), ENGLISH, tiny_lm, tiny_ref_lm, cfg)


def test_every_mode_is_registered():
    assert set(STRATEGIES) == {"crosslingual", "multilingual", "translate"}
    item = RewardInput("fr", "Bonjour ?", "Hello?", ["Salut"])
    assert reward_instruction("multilingual", item, RewardConfig()) == "Bonjour ?"
    assert STRATEGIES["translate"].needs_translator and not STRATEGIES["crosslingual"].needs_translator
    english = RewardInput("en", "Hello?", "Hello?", ["Hi"])  # English responses are scored untranslated
    assert make_strategy(RewardConfig(mode="translate"), translator=object()).scoring(english).instruction == "Hello?"
    assert reward_instruction("crosslingual", item, RewardConfig()) == prefixed("French", "Hello?")


def test_skipped_generation_is_passed_on_not_scored(tiny_lm, tiny_ref_lm):
    gen = {**generation("es", SPANISH, []), "skipped": "prompt too long"}
    rec = reward_record(gen, ENGLISH, tiny_lm, tiny_ref_lm, RewardConfig())
    assert rec["skipped"] == "prompt too long" and "reward" not in rec


def test_reward_language_writes_in_generation_order(tiny_lm, tiny_ref_lm, tmp_path):
    gens = [generation("es", SPANISH, RESPONSES_ES[:2], pid="b"), generation("es", SPANISH, RESPONSES_ES[1:], pid="a")]
    out = tmp_path / "es.jsonl"
    recs = reward_language(
        gens,
        {"a": ENGLISH, "b": ENGLISH},
        out,
        policy=Scorer.of(tiny_lm, BUDGET),
        reference=Scorer.of(tiny_ref_lm, BUDGET),
        config=RewardConfig(),
        strategy=make_strategy(RewardConfig()),
    )
    assert [r["id"] for r in recs] == ["b", "a"]
    from icr.core.io import read_jsonl

    assert read_jsonl(out) == recs


def test_records_scored_together_match_one_at_a_time(tiny_lm, tiny_ref_lm):
    """reward_records batches the responses of several prompts (and keeps skipped records in
    place); every number matches scoring each record alone."""
    gens = [
        generation("es", SPANISH, RESPONSES_ES),
        {**generation("en", ENGLISH, []), "id": "skip"},
        {**generation("en", ENGLISH, RESPONSES_EN), "id": "b"},
        {**generation("es", SPANISH, RESPONSES_ES[:1]), "id": "c"},
    ]
    cfg = RewardConfig()
    together = reward_records(gens, [ENGLISH] * len(gens), tiny_lm, tiny_ref_lm, cfg)
    assert [r["id"] for r in together] == [g["id"] for g in gens]
    assert together[1]["skipped"] and "reward" not in together[1]
    for got, gen in zip(together, gens):
        if "skipped" in got:
            continue
        alone = reward_record(gen, ENGLISH, tiny_lm, tiny_ref_lm, cfg)
        assert got["reward_prompt"] == alone["reward_prompt"] and got["scored_tokens"] == alone["scored_tokens"]
        for key in ("logp_policy", "logp_ref"):
            np.testing.assert_allclose(got[key], alone[key], atol=1e-3, rtol=0)


def test_models_split_by_device_map_give_the_rewards_of_whole_models(
    tiny_lm, tiny_ref_lm, tiny_dir, tiny_ref_dir, monkeypatch
):
    """`models.device_map: auto` loads through accelerate's big-model inference (on this CPU every
    layer lands on the CPU): the rewards are those of the default load, to fp32 tolerance."""
    from transformers import AutoModelForCausalLM

    from icr.config import ModelsConfig

    asked, original = [], AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):
        asked.append(kwargs.get("device_map"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    split = ModelsConfig(device="cpu", dtype="float32", device_map="auto")
    policy, reference = split.load(str(tiny_dir)), split.load(str(tiny_ref_dir))
    assert asked == ["auto", "auto"]
    gens = [generation("es", SPANISH, RESPONSES_ES), {**generation("en", ENGLISH, RESPONSES_EN), "id": "b"}]
    whole = reward_records(gens, [ENGLISH] * 2, tiny_lm, tiny_ref_lm, RewardConfig())
    mapped = reward_records(gens, [ENGLISH] * 2, policy, reference, RewardConfig())
    for a, b in zip(whole, mapped):
        np.testing.assert_allclose(a["reward"], b["reward"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a["logp_policy"], b["logp_policy"], rtol=1e-5, atol=1e-4)
