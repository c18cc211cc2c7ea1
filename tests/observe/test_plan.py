"""`icr plan`: counts and upper bounds from the config, the prompt files and a tokenizer, with no
model loaded; a time estimate only from a benchmark of the same device kind; judge calls and cost."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import icr.core.models
from helpers import X_ALPACAEVAL, needs_shared, run_config
from icr.cli import main
from icr.config import PlanEvalConfig, dump_config
from icr.core.chat import prompt_ids
from icr.core.models import load_tokenizer
from icr.observe.plan import eval_estimate, make_plan, time_estimate
from icr.observe.weights import weights_info
from icr.runtime.preflight import load_prompts

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("icr plan loaded a model")

    monkeypatch.setattr(icr.core.models, "load_model", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


def test_counts_are_the_prompts_times_languages_times_n(tiny_dir, tiny_ref_dir, tmp_path, no_model_loads):
    config = run_config(
        tmp_path, tiny_dir, tiny_ref_dir, "p", iterations=2, **{"data.max_prompt_tokens": 40, "train.grad_accum": 2}
    )
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


def test_translate_mode_bounds_the_translated_tokens_and_other_modes_translate_nothing(
    tiny_dir, tiny_ref_dir, tmp_path
):
    common = {"reward.translate_max_new_tokens": 7}
    crosslingual = make_plan(run_config(tmp_path, tiny_dir, tiny_ref_dir, "c", **common), roots=[tmp_path])
    translate = make_plan(
        run_config(tmp_path, tiny_dir, tiny_ref_dir, "t", **common, **{"reward.mode": "translate"}), roots=[tmp_path]
    )
    assert "translated_tokens_max" not in crosslingual["per_iteration"]
    it = translate["per_iteration"]
    assert it["translated_tokens_max"] == it["samples"] * 7


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
    config = run_config(tmp_path, tiny_dir, tiny_ref_dir, "p")
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
    assert not none["available"] and "device kind 'cpu'" in none["reason"] and "latest.json: cuda" in none["reason"]


def _gpu_part(tokens_per_s: float, **settings) -> dict:
    return {
        "status": "measured",
        "reason": None,
        "seconds": 2.0,
        "tokens": 2 * tokens_per_s,
        "tokens_per_s": tokens_per_s,
        "flops": None,
        "share_of_matmul": None,
        "peak_memory_gib": 1.0,
        "settings": settings,
    }


def _gpu_bench(root: Path, **overrides) -> Path:
    """A results file of `make bench-gpu` (schema icr-bench-gpu/1, the keys benchmarks/gpu.py documents)."""
    not_measured = {**_gpu_part(1.0), "status": "not-measured", "tokens_per_s": None}
    doc = {
        "schema": "icr-bench-gpu/1",
        "status": "measured",
        "reason": None,
        "shape": "llama3-8b",
        "device": {"name": "NVIDIA H100", "kind": "cuda", "memory_gib": 80.0},
        "scoring": {"ours": _gpu_part(20000.0), "reference": _gpu_part(5000.0), "ceiling": _gpu_part(40000.0)},
        "generation": {"hf": _gpu_part(900.0), "vllm": not_measured},
        "training": {
            "lora": _gpu_part(3000.0, params=8_000_000_000, lora=True),
            "full": _gpu_part(6000.0, params=1_000_000_000, lora=False),
        },
        **overrides,
    }
    path = root / "benchmarks" / "results" / "gpu-latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_time_on_a_gpu_comes_from_the_measured_parts_of_gpu_latest(tiny_dir, tiny_ref_dir, tmp_path):
    counts = {"generated_tokens_max": 9000, "scored_tokens_max": 40000, "training_token_slots_max": 6000}
    weights = weights_info(str(tiny_dir))
    config = run_config(tmp_path, tiny_dir, tiny_ref_dir, "p", **{"models.device": "cuda"})
    _gpu_bench(tmp_path / "g")
    est = time_estimate(config, counts, weights, [tmp_path / "g"])
    scale = weights["params"] / 8_000_000_000
    assert est["available"] and est["source"].endswith("gpu-latest.json") and est["device"] == "NVIDIA H100"
    assert est["per_iteration_s"]["generate"] == pytest.approx(9000 / 900.0 * scale)  # generation.hf
    assert est["per_iteration_s"]["reward"] == pytest.approx(40000 / 20000.0 * scale)  # scoring.ours
    assert est["per_iteration_s"]["train"] == pytest.approx(6000 / 6000.0 * weights["params"] / 1e9)  # full
    lora = config.model_copy(
        update={
            "train": config.train.model_copy(update={"lora": config.train.lora.model_copy(update={"enabled": True})})
        }
    )
    assert time_estimate(lora, counts, weights, [tmp_path / "g"])["per_iteration_s"]["train"] == pytest.approx(
        6000 / 3000.0 * scale
    )
    vllm = config.model_copy(update={"generate": config.generate.model_copy(update={"backend": "vllm"})})
    none = time_estimate(vllm, counts, weights, [tmp_path / "g"])  # generation.vllm was not measured
    assert not none["available"] and "not usable" in none["reason"] and "generate: not-measured" in none["reason"]
    assert "reward" not in none["reason"].split("not usable")[1]  # the measured parts are not listed


def test_the_placeholder_gpu_results_give_no_estimate_and_say_why(tiny_dir, tiny_ref_dir, tmp_path):
    config = run_config(tmp_path, tiny_dir, tiny_ref_dir, "p", **{"models.device": "cuda"})
    reason = "No NVIDIA GPU was available to the session that wrote this file"
    placeholder = {**_gpu_part(1.0), "status": "not-measured", "reason": reason}
    _gpu_bench(
        tmp_path / "g",
        status="not-measured",
        reason=reason,
        device=None,
        scoring={"ours": placeholder},
        generation={"hf": placeholder},
        training={"lora": placeholder, "full": placeholder},
    )
    counts = {"generated_tokens_max": 1, "scored_tokens_max": 1, "training_token_slots_max": 1}
    est = time_estimate(config, counts, weights_info(str(tiny_dir)), [tmp_path / "g"])
    assert not est["available"] and "gpu-latest.json: not usable" in est["reason"] and reason in est["reason"]


@needs_shared
@pytest.mark.parametrize("order,calls_per_item", [("random", 1), ("both", 2)])
def test_judge_calls_and_cost(order, calls_per_item):
    options = PlanEvalConfig(
        prompts=str(X_ALPACAEVAL), languages=["en", "es"], limit=3, order=order, price_input=2.0, price_output=8.0
    )
    est = eval_estimate(options, iterations=2)
    assert est["judge_calls"] == 3 * 2 * 3 * calls_per_item  # π0..π2 × languages × instructions × orders
    assert est["judge_input_tokens_max"] > est["judge_calls"] * 2048  # each prompt holds a full-length output
    assert est["cost_max"] == pytest.approx((est["judge_input_tokens_max"] * 2 + est["judge_calls"] * 8) / 1e6)


def test_plan_command_prints_and_writes_json(tiny_dir, tiny_ref_dir, tmp_path, no_model_loads):
    config = run_config(tmp_path, tiny_dir, tiny_ref_dir, "p")
    (tmp_path / "c.yaml").write_text(dump_config(config))
    result = CliRunner().invoke(
        main, ["plan", "--config", str(tmp_path / "c.yaml"), "--processes", "2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert f"= {plan['per_iteration']['samples']:,} samples per iteration" in result.output
    assert "training steps" in result.output and plan["config"]["processes"] == 2
    assert "icr eval: not counted" in result.output


def test_an_unloadable_tokenizer_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        main, ["plan", "--models.policy", "no-such-org/no-such-model", "--output_dir", str(tmp_path)]
    )
    assert result.exit_code != 0 and "pass --tokenizer" in result.output


def test_plan_shows_the_per_iteration_settings(tiny_dir, tiny_ref_dir, tmp_path, no_model_loads):
    config = run_config(tmp_path, tiny_dir, tiny_ref_dir, "p", iterations=2)
    (tmp_path / "c.yaml").write_text(dump_config(config))
    entries = "[{iteration: 1, set: {pairs.max_chosen_score: 500, train.replay: 0.5}}]"
    args = ["plan", "--config", str(tmp_path / "c.yaml"), "--iteration_overrides", entries]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "iteration 1: pairs.max_chosen_score=500, train.replay=0.5" in result.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["iteration_overrides"] == [
        {"iteration": 1, "set": {"pairs.max_chosen_score": 500, "train.replay": 0.5}}
    ]
    plain = CliRunner().invoke(main, ["plan", "--config", str(tmp_path / "c.yaml")], catch_exceptions=False)
    assert "per-iteration settings" not in plain.output


def test_the_plan_projects_memory_from_the_headers_or_from_the_given_size(tiny_dir, tiny_ref_dir, tmp_path):
    from icr.config import PlanConfig
    from icr.observe.plan_text import format_plan

    config = run_config(tmp_path, tiny_dir, tiny_ref_dir, "m")
    memory = make_plan(config, roots=[tmp_path])["memory"]
    params = weights_info(str(tiny_dir))["params"]
    assert memory["projected"] and memory["train"]["gib_per_gpu"]["ddp"] == round(8 * params / 1024**3, 1)
    unreadable = config.model_copy(update={"models": config.models.model_copy(update={"policy": "org/not-cached"})})
    options = PlanConfig(tokenizer=str(tiny_dir))
    assert not make_plan(unreadable, options, roots=[tmp_path])["memory"].get("projected")
    given = make_plan(unreadable, PlanConfig(tokenizer=str(tiny_dir), policy_params=70_553_706_496), roots=[tmp_path])
    assert given["memory"]["reward"]["device_map"] == "auto"
    assert "→ reward: the two scorers do not fit one GPU: models.device_map: auto" in format_plan(given)
