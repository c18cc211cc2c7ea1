"""`icr plan`: counts and upper bounds from the config, the prompt files and a tokenizer, with no
model loaded; a time estimate only from a benchmark of the same device kind; judge calls and cost."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_evaluate import X_ALPACAEVAL, needs_shared
from test_pipeline import tiny_config

import icr.models
from icr.cli import main
from icr.config import dump_config
from icr.models import load_tokenizer, prompt_ids
from icr.pipeline import load_prompts
from icr.plan import (
    EvalPlanOptions,
    eval_estimate,
    make_plan,
    time_estimate,
    weights_info,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("icr plan loaded a model")

    monkeypatch.setattr(icr.models, "load_model", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


def test_counts_are_the_prompts_times_languages_times_n(tiny_dir, tiny_ref_dir, tmp_path, no_model_loads):
    config = tiny_config(tiny_dir, tiny_ref_dir, tmp_path, "p", iterations=2, **{"data.max_prompt_tokens": 40,
                                                                                 "train.grad_accum": 2})
    plan = make_plan(config, roots=[tmp_path])
    tokenizer = load_tokenizer(str(tiny_dir))
    prompts = load_prompts(config)
    lengths = {lang: [len(prompt_ids(tokenizer, p.text)) for p in ps] for lang, ps in prompts.by_lang.items()}
    kept = sum(n <= 40 for ls in lengths.values() for n in ls)
    assert 0 < kept < 6  # the demo prompts straddle the limit: skipped ones are not counted
    it = plan["per_iteration"]
    assert (it["prompts"], it["prompts_kept"], it["samples"]) == (6, kept, kept * 2)
    assert it["generated_tokens_max"] == kept * 2 * 6  # N × max_new_tokens
    assert it["prefill_tokens"] == sum(n for ls in lengths.values() for n in ls if n <= 40)
    assert it["scored_tokens_max"] > 2 * kept * 2 * 6  # policy and reference, prompts and end-of-turn on top
    assert it["training_steps_max"] == math.ceil(math.ceil(kept / 2) / 2)  # batch_size 2, grad_accum 2
    assert plan["all_iterations"]["samples"] == 2 * kept * 2
    weights = weights_info(str(tiny_dir))
    assert weights["known"] and weights["params"] == sum(p.numel() for p in _tiny_params(tiny_dir))
    assert plan["disk"]["model_bytes"] == weights["params"] * 4  # saved as float32
    assert json.dumps(plan)  # the JSON the command writes


def _tiny_params(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors")).values()


def _bench(root: Path, device: str) -> None:
    (root / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "benchmarks" / "results" / "latest.json", root / "benchmarks" / "results" / "latest.json")
    data = json.loads((root / "benchmarks" / "results" / "latest.json").read_text())
    data["machine"]["device"] = device
    (root / "benchmarks" / "results" / "latest.json").write_text(json.dumps(data))


def test_time_is_estimated_only_from_a_benchmark_of_the_same_device_kind(tiny_dir, tiny_ref_dir, tmp_path):
    config = tiny_config(tiny_dir, tiny_ref_dir, tmp_path, "p")
    counts = {"generated_tokens_max": 1000, "scored_tokens_max": 4000, "training_token_slots_max": 2000}
    weights = weights_info(str(tiny_dir))
    _bench(tmp_path / "a", "cpu")
    est = time_estimate(config, counts, weights, [tmp_path / "a"])
    bench = json.loads((tmp_path / "a" / "benchmarks" / "results" / "latest.json").read_text())
    scale = weights["params"] / bench["training"]["detail"]["ours"]["params"]
    assert est["available"] and est["label"].startswith("ESTIMATE") and est["source"].endswith("latest.json")
    assert est["per_iteration_s"]["generate"] == pytest.approx(1000 / bench["generation"]["tokens_per_s"] * scale)
    assert est["per_iteration_s"]["reward"] == pytest.approx(4000 / bench["scoring"]["tokens_per_s"] * scale)
    _bench(tmp_path / "b", "cuda")
    none = time_estimate(config, counts, weights, [tmp_path / "b"])
    assert not none["available"] and "device kind 'cpu'" in none["reason"] and "cuda in" in none["reason"]


@needs_shared
@pytest.mark.parametrize("order,calls_per_item", [("random", 1), ("both", 2)])
def test_judge_calls_and_cost(order, calls_per_item):
    options = EvalPlanOptions(prompts=str(X_ALPACAEVAL), languages=("en", "es"), limit=3, order=order,
                              price_input_per_million=2.0, price_output_per_million=8.0)
    est = eval_estimate(options, iterations=2)
    assert est["judge_calls"] == 3 * 2 * 3 * calls_per_item  # π0..π2 × languages × instructions × orders
    assert est["judge_input_tokens_max"] > est["judge_calls"] * 2048  # each prompt holds a full-length output
    assert est["cost_max"] == pytest.approx((est["judge_input_tokens_max"] * 2 + est["judge_calls"] * 8) / 1e6)


def test_plan_command_prints_and_writes_json(tiny_dir, tiny_ref_dir, tmp_path, no_model_loads):
    config = tiny_config(tiny_dir, tiny_ref_dir, tmp_path, "p")
    (tmp_path / "c.yaml").write_text(dump_config(config))
    result = CliRunner().invoke(main, ["plan", "--config", str(tmp_path / "c.yaml"), "--processes", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert f"= {plan['per_iteration']['samples']:,} samples per iteration" in result.output
    assert "training steps" in result.output and plan["config"]["processes"] == 2
    assert "icr eval: not counted" in result.output


def test_an_unloadable_tokenizer_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["plan", "--models.policy", "no-such-org/no-such-model",
                                       "--output_dir", str(tmp_path)])
    assert result.exit_code != 0 and "pass --tokenizer" in result.output
