"""configs/paper-low-resource.yaml (en bn sw th): the languages reach every part that names or reads
a language: the crosslingual prefix, language-ID gating, the training prompts and X-AlpacaEval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SHARED_DATA, X_ALPACAEVAL, needs_shared
from icr.config import load_config
from icr.core.languages import detect_language, is_in_language
from icr.core.prompts import load_prompt_set
from icr.engines.rewarding import RewardInput, make_strategy
from icr.eval.benchmark import load_benchmark, resolve_sources

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "paper-low-resource.yaml"
LOW = ("bn", "sw", "th")
# The released scripts' names (utils/inference.py of ZNLP/Implicit-Cross-Lingual-Rewarding), copied here
# as the independent expectation of what the prefix says.
RELEASED_NAMES = {"bn": "Bengali", "sw": "Swahili", "th": "Thai"}
PAPER = load_config(REPO / "configs" / "paper-llama3-8b.yaml")


def test_config_is_the_paper_config_in_the_low_resource_languages():
    config = load_config(CONFIG)
    assert config.data.languages == ["en", *LOW]
    ignore = {"name": True, "iteration_overrides": True, "data": {"prompts", "languages"}}
    assert config.model_dump(exclude=ignore) == PAPER.model_dump(exclude=ignore)
    assert config.at_iteration(1).pairs.max_chosen_score == 500


@pytest.mark.parametrize("lang", LOW)
def test_the_crosslingual_prefix_names_the_language_as_released(lang):
    strategy = make_strategy(load_config(CONFIG).reward)
    item = RewardInput(lang=lang, native="(native)", english="Name a fruit.", responses=["x"])
    instruction = strategy.scoring(item).instruction
    assert instruction == (
        f"Please answer the following instruction using only {RELEASED_NAMES[lang]}, unless explicitly "
        "instructed to respond in a different language.\n\nName a fruit."
    )


def _first_instructions(lang: str, n: int = 3) -> list[str]:
    records = json.loads((X_ALPACAEVAL / "prompts" / f"{lang}.json").read_text(encoding="utf-8"))
    return [r["instruction"] for r in records[:n]]


@needs_shared
@pytest.mark.parametrize("lang", LOW)
def test_language_id_recognises_the_language_and_gates_english(lang):
    """The gate of `pairs.language_filter`: the benchmark's own translations count as in-language, the
    English original as off-language."""
    native = " ".join(_first_instructions(lang))
    english = " ".join(_first_instructions("en"))
    assert detect_language(native)[0] == lang
    assert is_in_language(native, lang) and not is_in_language(english, lang)


@needs_shared
@pytest.mark.parametrize("lang", LOW)
def test_x_alpacaeval_loads_the_language_with_its_reference(lang):
    prompt_dir, ref_dir = resolve_sources(str(X_ALPACAEVAL), None)
    items = load_benchmark(prompt_dir, ref_dir, lang, limit=4)
    assert [it["id"] for it in items] == [1, 2, 3, 4]
    assert all(it["instruction"] and it["reference"] for it in items)


@needs_shared
def test_the_training_prompts_load_aligned_in_all_four_languages():
    config = load_config(CONFIG)
    prompts = load_prompt_set(str(SHARED_DATA / "ultrafeedback-multilingual" / "random_1000"), config.data.languages)
    ids = [p.id for p in prompts.by_lang["en"]]
    assert len(ids) == 1000
    for lang in LOW:
        assert [p.id for p in prompts.by_lang[lang]] == ids
        assert detect_language(" ".join(p.text for p in prompts.by_lang[lang][:5]))[0] == lang
