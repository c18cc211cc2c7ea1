"""End to end on real weights and real data: generate → reward → pairs with SmolLM2-135M-Instruct."""

from __future__ import annotations

import math

import pytest

from helpers import EMBEDDED, SHARED_DATA, run_config
from icr.config import GenerateConfig
from icr.core.io import read_json, read_jsonl
from icr.core.prompts import load_prompt_set
from icr.engines.sampling.hf import HFGenerator
from icr.pipeline import run_stage
from icr.stages.generate import generate_language

pytestmark = pytest.mark.slow  # minutes on a 2-core CPU: `make test-fast` skips this file

UF = SHARED_DATA / "ultrafeedback-multilingual"


def test_real_model_generate_reward_pairs(tmp_path, tiny_ref_dir, smollm_path):
    """π = SmolLM2-135M-Instruct, π_ref = a tiny random model with the same tokenizer (so that the
    rewards are not all zero): 2 prompts × 2 languages × 2 samples."""
    cfg = run_config(
        tmp_path,
        EMBEDDED,
        tiny_ref_dir,
        "real",
        **{
            "models.dtype": "auto",
            "data.limit": 2,
            "generate.max_new_tokens": 16,
            "generate.batch_prompts": 8,
            "reward.batch_prompts": 8,
        },
    )
    for stage in ("generate", "reward", "pairs"):
        run = run_stage(cfg, stage)
    it = run.root / "iter_0"
    for lang in ("en", "es"):
        gens = read_jsonl(it / "generations" / f"{lang}.jsonl")
        assert len(gens) == 2
        for g in gens:
            assert g["lang"] == lang and len(g["responses"]) == 2
            assert all(isinstance(t, str) and t.strip() for t in g["responses"])  # a real model says something
            assert all(1 <= n <= 16 for n in g["response_tokens"])
        rewards = read_jsonl(it / "rewards" / f"{lang}.jsonl")
        assert [r["id"] for r in rewards] == [g["id"] for g in gens]
        for r in rewards:
            assert len(r["reward"]) == 2
            assert all(math.isfinite(x) and x != 0.0 for x in r["reward"])
            assert all(lp < 0 for lp in r["logp_policy"] + r["logp_ref"])
            # the real model predicts its own samples far better than a random model does
            assert all(p > q for p, q in zip(r["logp_policy"], r["logp_ref"]))
            assert r["reward"][0] == pytest.approx(0.1 * (r["logp_policy"][0] - r["logp_ref"][0]))
    pairs = read_jsonl(it / "pairs.jsonl")
    assert pairs, "no preference pairs"
    for p in pairs:
        assert p["prompt"][0]["role"] == "user" and isinstance(p["prompt"][0]["content"], str)
        assert [m["role"] for m in p["chosen"]] == ["assistant"] and [m["role"] for m in p["rejected"]] == ["assistant"]
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]
        assert p["score_chosen"] > p["score_rejected"]
    stats = read_json(it / "pairs_stats.json")
    assert sum(s["pairs"] for s in stats.values()) == len(pairs)


@pytest.mark.skipif(not UF.exists(), reason="../shared/data is not available")
def test_real_prompt_slice_through_generate(tiny_lm, tmp_path):
    prompts = load_prompt_set(str(UF / "random_1000"), ["en", "es", "zh"], limit=2)
    assert all(len(v) == 2 for v in prompts.by_lang.values())
    cfg = GenerateConfig(n=2, max_new_tokens=4)
    generator = HFGenerator(tiny_lm, cfg)
    out = {
        lang: generate_language(
            generator, items, tmp_path / f"{lang}.jsonl", cfg, seed=0, iteration=0, max_prompt_tokens=1024
        )
        for lang, items in prompts.by_lang.items()
    }
    for lang, records in out.items():
        assert [r["id"] for r in records] == [p.id for p in prompts.by_lang["en"]]
        assert [r["prompt"] for r in records] == [p.text for p in prompts.by_lang[lang]]
        for r in records:
            assert r["lang"] == lang
            assert r.get("skipped") or len(r["responses"]) == 2
        assert read_jsonl(tmp_path / f"{lang}.jsonl") == records
