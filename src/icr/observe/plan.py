"""`icr plan --config FILE`: what a run will cost, before anything loads a model.

From the config, the prompt files and a tokenizer (tokenizer only, never weights):

    samples per iteration       = Σ_lang prompts_lang × N       (prompts over data.max_prompt_tokens are skipped)
    tokens to generate          ≤ samples × generate.max_new_tokens        (+ prompt prefill, once per prompt)
    tokens to score, per model  ≤ Σ_prompts (reward prompt + N × (max_new_tokens + end-of-turn))   × 2 models
    pairs                       ≤ one per prompt and language
    training steps              ≤ ⌈epochs × ⌈pairs / (batch_size × processes)⌉ / grad_accum⌉
    training token slots        ≤ pairs × 2 × train.max_length

Disk is estimated from the bytes per token measured on the prompts of each language. Time is an
estimate, never a measurement: the rates of the latest benchmark results for the same kind of
device, scaled by the ratio of parameter counts, applied to the upper bounds above; the file is
named. Two kinds of results file are read (`BENCHMARK_READERS`, by their `schema`):
`benchmarks/results/gpu-latest.json` (`make bench-gpu`, schema `icr-bench-gpu/1`: `device.kind`,
`scoring.ours`, `generation.<generate.backend>`, `training.lora|full`, each used only when its
status is "measured") and `benchmarks/results/latest.json` (`make bench`, the CPU benchmarks:
`machine.device`, `generation`, `scoring`, `training.step_s`). `icr eval`'s judge calls and tokens
are counted from the X-AlpacaEval files with the default judge's prompt and priced per million tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from icr.config import JudgeConfig, PlanConfig, PlanEvalConfig, RunConfig
from icr.core.errors import IcrError, ModelLoadError
from icr.engines.rewarding import STRATEGIES
from icr.observe.memory import memory_plan
from icr.observe.weights import weights_info

BENCHMARK_FILES = ("benchmarks/results/gpu-latest.json", "benchmarks/results/latest.json")
RECORD_OVERHEAD_BYTES = 300  # ids, keys, seeds and flags of one JSON line
NUMBER_BYTES = 24  # one float written in a JSON list
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _prompt_lengths(tokenizer, texts: list[str]) -> list[int]:
    from icr.core.chat import prompt_ids

    return [len(prompt_ids(tokenizer, text)) for text in texts]


def _reward_instruction(config: RunConfig, item) -> str:
    """The instruction the reward models see for `item` under `reward.mode`."""
    from icr.engines.rewarding import STRATEGIES, make_strategy

    if STRATEGIES[config.reward.mode].needs_translator:  # translate-then-score: the plain English instruction
        return item.english
    return make_strategy(config.reward).scoring(item).instruction


def measure_prompts(config: RunConfig, tokenizer) -> dict[str, dict]:
    """Per language: prompts, those over max_prompt_tokens, and the token counts the bounds need."""
    from icr.core.chat import end_of_turn_ids
    from icr.engines.rewarding import RewardInput
    from icr.runtime.preflight import load_prompts

    prompt_set = load_prompts(config)
    eot = len(end_of_turn_ids(tokenizer))
    out = {}
    for lang, prompts in prompt_set.by_lang.items():
        lengths = _prompt_lengths(tokenizer, [p.text for p in prompts])
        kept = [p for p, n in zip(prompts, lengths) if n <= config.data.max_prompt_tokens]
        reward_prompts = [
            _reward_instruction(config, RewardInput(lang, p.text, prompt_set.english[p.id], [])) for p in kept
        ]
        raw_tokens = sum(len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in kept)
        raw_bytes = sum(len(p.text.encode("utf-8")) for p in kept)
        out[lang] = {
            "prompts": len(prompts),
            "skipped_too_long": len(prompts) - len(kept),
            "prompt_tokens": sum(n for n in lengths if n <= config.data.max_prompt_tokens),
            "reward_prompt_tokens": sum(_prompt_lengths(tokenizer, reward_prompts)),
            "max_prompt_tokens_seen": max(lengths, default=0),
            "end_of_turn_tokens": eot,
            "bytes_per_token": raw_bytes / raw_tokens if raw_tokens else 4.0,
            "prompt_bytes": raw_bytes,
        }
    return out


def training_steps(pairs: int, config: RunConfig, processes: int) -> int:
    """Optimizer steps of transformers' Trainer for `pairs` examples (upper bound when pairs is)."""
    t = config.train
    batches = math.ceil(pairs / (t.batch_size * processes))
    return math.ceil(t.epochs * math.ceil(batches / t.grad_accum)) if batches else 0


def iteration_counts(config: RunConfig, measured: dict[str, dict], processes: int) -> dict[str, Any]:
    """Upper bounds of one iteration's work (the same for every iteration)."""
    n, new = config.generate.n, config.generate.max_new_tokens
    kept = {lang: m["prompts"] - m["skipped_too_long"] for lang, m in measured.items()}
    samples = sum(kept.values()) * n
    scored = sum(
        m["reward_prompt_tokens"] + kept[lang] * n * (new + m["end_of_turn_tokens"]) for lang, m in measured.items()
    )
    pairs = sum(kept.values())
    counts = {
        "prompts": sum(m["prompts"] for m in measured.values()),
        "prompts_kept": pairs,
        "samples": samples,
        "prefill_tokens": sum(m["prompt_tokens"] for m in measured.values()),
        "generated_tokens_max": samples * new,
        "scored_tokens_max": 2 * scored,  # policy and reference score every response
        "pairs_max": pairs,
        "training_steps_max": training_steps(pairs, config, processes),
        "training_token_slots_max": pairs * 2 * config.train.max_length,
    }
    if STRATEGIES[config.reward.mode].needs_translator:
        counts["translated_tokens_max"] = samples * config.reward.translate_max_new_tokens
    return counts


def disk_estimate(config: RunConfig, measured: dict[str, dict], counts: dict, model: dict) -> dict[str, Any]:
    """Bytes of one iteration's files, from the bytes per token measured on each language's prompts."""
    n, new = config.generate.n, config.generate.max_new_tokens
    responses = sum((m["prompts"] - m["skipped_too_long"]) * n * new * m["bytes_per_token"] for m in measured.values())
    prompts = sum(m["prompt_bytes"] for m in measured.values())
    records = counts["prompts"] * RECORD_OVERHEAD_BYTES
    generations = responses + prompts + records + counts["samples"] * 2 * NUMBER_BYTES
    rewards = responses + 3 * prompts + records + counts["samples"] * 4 * NUMBER_BYTES  # + prompt_en, reward prompt
    pairs = 2 * responses / n + 2 * prompts + counts["pairs_max"] * RECORD_OVERHEAD_BYTES
    train_dtype = config.models.dtype if config.models.dtype != "auto" else None
    model_bytes = None
    if model["known"]:
        model_bytes = model["params"] * DTYPE_BYTES[train_dtype] if train_dtype else model["bytes"]
    per_iter = generations + rewards + pairs + (model_bytes or 0)
    return {
        "generations_bytes": int(generations),
        "rewards_bytes": int(rewards),
        "pairs_bytes": int(pairs),
        "model_bytes": model_bytes,
        "per_iteration_bytes": int(per_iter),
        "total_bytes": int(per_iter * config.iterations),
        "note": "estimate: responses at max_new_tokens, bytes per token measured on the prompts"
        + ("" if model_bytes is not None else f"; model folders not counted (size unknown: {model['reason']})"),
    }


def device_kind(device: str) -> str:
    """'cpu' or 'cuda' (GPU) for a config's `models.device` or a benchmark's `machine.device`."""
    text = device.lower()
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if text.startswith("cuda") or "gpu" in text or "nvidia" in text else text.split(":")[0]


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is below it (as the user typed it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _cpu_rates(r: dict, config: RunConfig) -> dict[str, Any]:
    """`make bench` (benchmarks/run.py): one model for every part; training rate in token slots."""
    train = r["training"]
    detail = train.get("detail", {}).get("ours", {})
    params = r["machine"].get("model_params") or detail["params"]
    slots_per_step = detail["token_slots"] / len(detail["steps"])
    return {
        "device": r["machine"]["device"],
        "kind": device_kind(r["machine"]["device"]),
        "generate": (r["generation"]["tokens_per_s"], params),
        "reward": (r["scoring"]["tokens_per_s"], params),
        "train": (slots_per_step / train["step_s"], params),
    }


def _gpu_rates(r: dict, config: RunConfig) -> dict[str, Any]:
    """`make bench-gpu` (schema icr-bench-gpu/1): scoring.ours, generation.<generate.backend> and the
    training step of `train.lora.enabled` (lora on the main shape, full on a smaller one), each
    measured; the main shape's size is the LoRA part's `settings.params`."""
    parts = {
        "generate": r["generation"][config.generate.backend],
        "reward": r["scoring"]["ours"],
        "train": r["training"]["lora" if config.train.lora.enabled else "full"],
    }
    missing: dict[tuple, list[str]] = {}  # (status, reason) -> stages, so a placeholder file says it once
    for stage, part in parts.items():
        if part["status"] != "measured":
            missing.setdefault((part["status"], part.get("reason")), []).append(stage)
    if missing:
        raise ValueError(
            "; ".join(f"{', '.join(stages)}: {status} ({reason})" for (status, reason), stages in missing.items())
        )
    main_params = (
        r["training"]["lora"]["settings"].get("params") if r["training"]["lora"]["status"] == "measured" else None
    )
    if main_params is None:
        raise ValueError("the main shape's parameter count (training.lora.settings.params) was not measured")
    return {
        "device": r["device"]["name"],
        "kind": r["device"]["kind"],
        "generate": (parts["generate"]["tokens_per_s"], main_params),
        "reward": (parts["reward"]["tokens_per_s"], main_params),
        "train": (parts["train"]["tokens_per_s"], parts["train"]["settings"]["params"]),
    }


# results-file schema -> reader (files without a `schema` are `make bench`'s CPU results)
BENCHMARK_READERS = {"icr-bench-gpu/1": _gpu_rates, None: _cpu_rates}


def benchmark_rates(path: Path, config: RunConfig) -> dict[str, Any]:
    """Per stage (tokens per second, parameters of the model measured) from a benchmark results
    file, with its device; `{"file", "unusable": why}` when it cannot give them."""
    r = json.loads(path.read_text())
    reader = BENCHMARK_READERS.get(r.get("schema"))
    if reader is None:
        return {"file": _shown(path), "unusable": f"unknown schema {r.get('schema')!r}"}
    try:
        return {"file": _shown(path), **reader(r, config)}
    except ValueError as err:  # parts not measured: their status and reason
        return {"file": _shown(path), "unusable": str(err)}
    except (KeyError, TypeError, ZeroDivisionError) as err:
        return {"file": _shown(path), "unusable": f"{type(err).__name__}: {err}"}


def benchmark_roots() -> list[Path]:
    """Where `benchmarks/results` is looked for: the working directory, then this source checkout."""
    here = Path(__file__).resolve().parents[3]
    return list(dict.fromkeys([Path("."), here]))


STAGE_TOKENS = {"generate": "generated_tokens_max", "reward": "scored_tokens_max", "train": "training_token_slots_max"}


def time_estimate(config: RunConfig, counts: dict, model: dict, roots: list[Path] | None = None) -> dict[str, Any]:
    """Hours for all iterations from the matching benchmark's rates, or why there is none."""
    kind = device_kind(config.models.device)
    files = list(
        dict.fromkeys(
            (root / name).resolve()
            for root in roots or benchmark_roots()
            for name in BENCHMARK_FILES
            if (root / name).exists()
        )
    )
    found = [benchmark_rates(path, config) for path in files]
    match = next((r for r in found if "unusable" not in r and r["kind"] == kind), None)
    if match is None:
        have = (
            "; ".join(
                f"{r['file']}: " + (f"not usable ({r['unusable']})" if "unusable" in r else r["kind"]) for r in found
            )
            or "no benchmark results"
        )
        return {
            "available": False,
            "reason": f"no benchmark results for device kind '{kind}' (have: {have}); "
            "run `make bench` (CPU) or `make bench-gpu` on such a device",
        }
    if not model["known"]:
        return {
            "available": False,
            "reason": f"{match['file']} matches, but the policy's parameter count is "
            f"unknown ({model['reason']}), so its rates cannot be scaled",
        }
    scale = {stage: model["params"] / match[stage][1] for stage in STAGE_TOKENS}
    seconds = {stage: counts[key] / match[stage][0] * scale[stage] for stage, key in STAGE_TOKENS.items()}
    return {
        "available": True,
        "label": "ESTIMATE (not a measurement)",
        "source": match["file"],
        "device": match["device"],
        "benchmark_params": {s: match[s][1] for s in STAGE_TOKENS},
        "scale": scale,
        "per_iteration_s": seconds,
        "total_s": sum(seconds.values()) * config.iterations,
        "method": "benchmark rates × (policy params / benchmarked params), applied to the token upper bounds; "
        "one process",
    }


def _judge_messages():
    """The chat messages of `icr eval`'s default judge (`JudgeConfig()`, the paper's), built without a request."""
    from icr.eval.judges import make_judge

    return make_judge(JudgeConfig(), device="cpu", dtype="auto").messages


def eval_estimate(options: PlanEvalConfig, iterations: int) -> dict[str, Any]:
    """Judge calls and tokens of `icr eval` on the run's models, priced per million tokens."""
    if options.prompts is None:
        return {"available": False, "reason": "pass --eval-prompts (e.g. ../shared/data/x-alpacaeval) to count them"}
    from icr.eval.benchmark import load_benchmark, resolve_sources
    from icr.eval.judges.base import JudgeRequest, estimate_tokens
    from icr.eval.judging import ORDERS, PairItem

    try:
        messages = _judge_messages()
    except IcrError as err:
        return {"available": False, "reason": f"the default judge's prompt is not available: {err}"}
    prompt_dir, reference_dir = resolve_sources(options.prompts, None)
    models = options.models or iterations + 1
    per_model_calls = prompt_tokens = 0
    for lang in options.languages:
        for item in load_benchmark(prompt_dir, reference_dir, lang, options.limit):
            per_model_calls += 1
            request = JudgeRequest(item["instruction"], lang, item["reference"], "")
            prompt_tokens += estimate_tokens(messages(request)) + options.max_new_tokens
    orders = len(ORDERS[options.order](PairItem("", "", 0, "", "a", "b"), 0))  # judgements per pair
    calls = models * per_model_calls * orders
    input_tokens, output_tokens = models * prompt_tokens * orders, calls  # one verdict token per call
    cost = (input_tokens * options.price_input + output_tokens * options.price_output) / 1e6
    return {
        "available": True,
        "models": models,
        "languages": list(options.languages),
        "judge_calls": calls,
        "outputs_to_generate": models * per_model_calls,
        "generated_tokens_max": models * per_model_calls * options.max_new_tokens,
        "judge_input_tokens_max": input_tokens,
        "judge_output_tokens": output_tokens,
        "price_per_million": {"input": options.price_input, "output": options.price_output},
        "cost_max": cost,
        "note": "judge prompt (the default judge's) ≈ UTF-8 bytes / 3 "
        "(icr.eval.judges.base.estimate_tokens) with the model's output at eval "
        "max_new_tokens; cached judgements are not subtracted",
    }


def _memory(config: RunConfig, options: PlanConfig, policy: dict[str, Any]) -> dict[str, Any]:
    """`icr.observe.memory.memory_plan` of the policy (the reference's size when readable, else the
    policy's: a DPO model and its SFT reference share an architecture)."""
    if not policy["known"]:
        return {"known": False, "reason": policy["reason"] + " (give --policy-params)"}
    reference = weights_info(config.models.reference)
    reference_params = reference["params"] if reference["known"] else policy["params"]
    return memory_plan(
        policy["params"],
        reference_params,
        options.gpu_memory_gib,
        options.gpus_per_node,
        options.nodes,
        config.generate.gpu_memory_utilization,
    )


def make_plan(config: RunConfig, options: PlanConfig = PlanConfig(), roots: list[Path] | None = None) -> dict[str, Any]:
    """The whole plan as a JSON-ready dict (loads a tokenizer, never a model)."""
    from icr.core.models import load_tokenizer

    spec = options.tokenizer or config.models.policy
    try:
        tokenizer = load_tokenizer(spec, trust_remote_code=config.models.trust_remote_code)
    except Exception as err:  # noqa: BLE001  (offline Hub id, missing folder, bad files: say what to do)
        raise ModelLoadError(
            f"cannot load the tokenizer of {spec!r} ({type(err).__name__}: {str(err)[:300]}); "
            "pass --tokenizer with a local tokenizer to measure the prompts with"
        ) from None
    measured = measure_prompts(config, tokenizer)
    counts = iteration_counts(config, measured, options.processes)
    model = weights_info(config.models.policy)
    if options.policy_params and not model["known"]:
        model = {"known": True, "params": options.policy_params, "bytes": options.policy_params * 2, "given": True}
    plan = {
        "config": {
            "name": config.name,
            "policy": config.models.policy,
            "device": config.models.device,
            "iterations": config.iterations,
            "languages": config.data.languages,
            "n": config.generate.n,
            "max_new_tokens": config.generate.max_new_tokens,
            "processes": options.processes,
        },
        "tokenizer": spec,
        "per_language": measured,
        "per_iteration": counts,
        "all_iterations": {k: v * config.iterations for k, v in counts.items()},
        "policy_weights": model,
        "disk": disk_estimate(config, measured, counts, model),
        "time": time_estimate(config, counts, model, roots),
        "eval": eval_estimate(options.eval, config.iterations),
        "memory": _memory(config, options, model),
    }
    if config.iteration_overrides:  # the counts above are of the run's own settings, not of these
        plan["iteration_overrides"] = [{"iteration": o.iteration, "set": o.set} for o in config.iteration_overrides]
    return plan
