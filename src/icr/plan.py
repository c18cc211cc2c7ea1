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
device (`benchmarks/results/latest.json`, `gpu-latest.json`), scaled by the ratio of parameter
counts, applied to the upper bounds above; the file is named. `icr eval`'s judge calls and tokens
are counted from the X-AlpacaEval files and priced per million tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icr.config import RunConfig
from icr.evaluate import DEFAULT_LANGUAGES

BENCHMARK_FILES = ("benchmarks/results/gpu-latest.json", "benchmarks/results/latest.json")
RECORD_OVERHEAD_BYTES = 300  # ids, keys, seeds and flags of one JSON line
NUMBER_BYTES = 24  # one float written in a JSON list
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class EvalPlanOptions:
    """What `icr eval` would do after the run (the defaults are `icr eval`'s)."""

    prompts: str | None = None  # X-AlpacaEval root or prompts folder; None: no eval section
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    models: int | None = None  # default: π^0 … π^T, as `icr eval --run-dir`
    limit: int | None = None
    max_new_tokens: int = 2048
    order: str = "random"  # 'both' judges each pair twice
    price_input_per_million: float = 10.0
    price_output_per_million: float = 30.0


def _prompt_lengths(tokenizer, texts: list[str]) -> list[int]:
    from icr.models import prompt_ids

    return [len(prompt_ids(tokenizer, text)) for text in texts]


def measure_prompts(config: RunConfig, tokenizer) -> dict[str, dict]:
    """Per language: prompts, those over max_prompt_tokens, and the token counts the bounds need."""
    from icr.models import end_of_turn_ids
    from icr.pipeline import load_prompts
    from icr.reward import RewardInput, reward_instruction

    prompt_set = load_prompts(config)
    eot = len(end_of_turn_ids(tokenizer))
    out = {}
    for lang, prompts in prompt_set.by_lang.items():
        lengths = _prompt_lengths(tokenizer, [p.text for p in prompts])
        kept = [(p, n) for p, n in zip(prompts, lengths) if n <= config.data.max_prompt_tokens]
        reward_prompts = [reward_instruction(config.reward.mode, RewardInput(lang, p.text, prompt_set.english[p.id], []),
                                             config.reward) for p, _ in kept]
        raw_tokens = sum(len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p, _ in kept)
        raw_bytes = sum(len(p.text.encode("utf-8")) for p, _ in kept)
        out[lang] = {"prompts": len(prompts), "skipped_too_long": len(prompts) - len(kept),
                     "prompt_tokens": sum(n for _, n in kept),
                     "reward_prompt_tokens": sum(_prompt_lengths(tokenizer, reward_prompts)),
                     "max_prompt_tokens_seen": max(lengths, default=0), "end_of_turn_tokens": eot,
                     "bytes_per_token": raw_bytes / raw_tokens if raw_tokens else 4.0,
                     "prompt_bytes": sum(len(p.text.encode("utf-8")) for p, _ in kept)}
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
    scored = sum(m["reward_prompt_tokens"] + kept[lang] * n * (new + m["end_of_turn_tokens"])
                 for lang, m in measured.items())
    pairs = sum(kept.values())
    counts = {
        "prompts": sum(m["prompts"] for m in measured.values()), "prompts_kept": pairs, "samples": samples,
        "prefill_tokens": sum(m["prompt_tokens"] for m in measured.values()),
        "generated_tokens_max": samples * new,
        "scored_tokens_max": 2 * scored,  # policy and reference score every response
        "pairs_max": pairs, "training_steps_max": training_steps(pairs, config, processes),
        "training_token_slots_max": pairs * 2 * config.train.max_length,
    }
    if config.reward.mode == "translate":
        counts["translated_tokens_max"] = samples * config.reward.translate_max_new_tokens
    return counts


def weights_info(spec: str) -> dict[str, Any]:
    """Parameter count and bytes of a model's safetensors files, read from their headers only
    (local folders and embedded models); `known: False` with the reason otherwise."""
    from icr.models import ModelLoadError, resolve_model_path

    try:
        folder = Path(resolve_model_path(spec))
    except ModelLoadError as err:
        return {"known": False, "reason": str(err)}
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return {"known": False, "reason": f"{spec}: no local safetensors files (a Hub id is not downloaded to plan)"}
    params = 0
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        params += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return {"known": True, "params": params, "bytes": sum(f.stat().st_size for f in files)}


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
    return {"generations_bytes": int(generations), "rewards_bytes": int(rewards), "pairs_bytes": int(pairs),
            "model_bytes": model_bytes, "per_iteration_bytes": int(per_iter),
            "total_bytes": int(per_iter * config.iterations),
            "note": "estimate: responses at max_new_tokens, bytes per token measured on the prompts"
            + ("" if model_bytes is not None else "; model folders not counted (size unknown: " + model["reason"] + ")")}


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


def benchmark_rates(path: Path) -> dict[str, Any] | None:
    """The rates a time estimate needs from a benchmark results file, or None if it lacks them."""
    r = json.loads(path.read_text())
    try:
        train = r["training"]
        detail = train.get("detail", {}).get("ours", {})
        slots_per_step = detail["token_slots"] / len(detail["steps"])
        return {"file": _shown(path), "device": r["machine"]["device"], "kind": device_kind(r["machine"]["device"]),
                "params": r.get("machine", {}).get("model_params") or detail["params"],
                "generated_tokens_per_s": r["generation"]["tokens_per_s"],
                "scored_tokens_per_s": r["scoring"]["tokens_per_s"],
                "training_token_slots_per_s": slots_per_step / train["step_s"]}
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def benchmark_roots() -> list[Path]:
    """Where `benchmarks/results` is looked for: the working directory, then this source checkout."""
    here = Path(__file__).resolve().parents[2]
    return list(dict.fromkeys([Path("."), here]))


def time_estimate(config: RunConfig, counts: dict, model: dict, roots: list[Path] | None = None) -> dict[str, Any]:
    """Hours for all iterations from the matching benchmark's rates, or why there is none."""
    kind = device_kind(config.models.device)
    files = list(dict.fromkeys((root / name).resolve() for root in roots or benchmark_roots()
                               for name in BENCHMARK_FILES if (root / name).exists()))
    found = [rates for path in files for rates in [benchmark_rates(path)] if rates]
    match = next((r for r in found if r["kind"] == kind), None)
    if match is None:
        have = ", ".join(f"{r['kind']} in {r['file']}" for r in found) or "no benchmark results"
        return {"available": False, "reason": f"no benchmark results for device kind '{kind}' (have: {have}); "
                                              "run `make bench` on such a device"}
    if not model["known"]:
        return {"available": False, "reason": f"{match['file']} matches, but the policy's parameter count is "
                                              f"unknown ({model['reason']}), so its rates cannot be scaled"}
    scale = model["params"] / match["params"]
    seconds = {"generate": counts["generated_tokens_max"] / match["generated_tokens_per_s"] * scale,
               "reward": counts["scored_tokens_max"] / match["scored_tokens_per_s"] * scale,
               "train": counts["training_token_slots_max"] / match["training_token_slots_per_s"] * scale}
    return {"available": True, "label": "ESTIMATE (not a measurement)", "source": match["file"],
            "device": match["device"], "benchmark_params": match["params"], "scale": scale,
            "per_iteration_s": seconds, "total_s": sum(seconds.values()) * config.iterations,
            "method": "benchmark rates × (policy params / benchmark params), applied to the token upper bounds; "
                      "one process"}


def eval_estimate(options: EvalPlanOptions, iterations: int) -> dict[str, Any]:
    """Judge calls and tokens of `icr eval` on the run's models, priced per million tokens."""
    if options.prompts is None:
        return {"available": False, "reason": "pass --eval-prompts (e.g. ../shared/data/x-alpacaeval) to count them"}
    from icr.evaluate import load_benchmark, resolve_sources
    from icr.judges import JudgeRequest, estimate_tokens, judge_messages

    prompt_dir, reference_dir = resolve_sources(options.prompts, None)
    models = options.models or iterations + 1
    per_model_calls = prompt_tokens = 0
    for lang in options.languages:
        for item in load_benchmark(prompt_dir, reference_dir, lang, options.limit):
            request = JudgeRequest(item["instruction"], lang, item["reference"], "")
            per_model_calls += 1
            prompt_tokens += estimate_tokens(judge_messages(request)) + options.max_new_tokens
    orders = 2 if options.order == "both" else 1
    calls = models * per_model_calls * orders
    input_tokens, output_tokens = models * prompt_tokens * orders, calls  # one verdict token per call
    cost = (input_tokens * options.price_input_per_million + output_tokens * options.price_output_per_million) / 1e6
    return {"available": True, "models": models, "languages": list(options.languages), "judge_calls": calls,
            "outputs_to_generate": models * per_model_calls, "generated_tokens_max":
            models * per_model_calls * options.max_new_tokens, "judge_input_tokens_max": input_tokens,
            "judge_output_tokens": output_tokens, "price_per_million": {"input": options.price_input_per_million,
                                                                      "output": options.price_output_per_million},
            "cost_max": cost, "note": "judge prompt ≈ UTF-8 bytes / 3 (icr.judges.estimate_tokens) with the "
                                      "model's output at eval max_new_tokens; cached judgements are not subtracted"}


def make_plan(config: RunConfig, tokenizer_spec: str | None = None, processes: int = 1,
              eval_options: EvalPlanOptions = EvalPlanOptions(), roots: list[Path] | None = None) -> dict[str, Any]:
    """The whole plan as a JSON-ready dict (loads a tokenizer, never a model)."""
    from icr.models import load_tokenizer

    spec = tokenizer_spec or config.models.policy
    try:
        tokenizer = load_tokenizer(spec, trust_remote_code=config.models.trust_remote_code)
    except Exception as err:  # noqa: BLE001  (offline Hub id, missing folder, bad files: say what to do)
        raise PlanError(f"cannot load the tokenizer of {spec!r} ({type(err).__name__}: {str(err)[:300]}); "
                        "pass --tokenizer with a local tokenizer to measure the prompts with") from None
    measured = measure_prompts(config, tokenizer)
    counts = iteration_counts(config, measured, processes)
    model = weights_info(config.models.policy)
    return {
        "config": {"name": config.name, "policy": config.models.policy, "device": config.models.device,
                   "iterations": config.iterations, "languages": config.data.languages, "n": config.generate.n,
                   "max_new_tokens": config.generate.max_new_tokens, "processes": processes},
        "tokenizer": spec, "per_language": measured, "per_iteration": counts,
        "all_iterations": {k: v * config.iterations for k, v in counts.items()},
        "policy_weights": model, "disk": disk_estimate(config, measured, counts, model),
        "time": time_estimate(config, counts, model, roots),
        "eval": eval_estimate(eval_options, config.iterations),
    }


class PlanError(RuntimeError):
    pass


def _size(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text for the terminal (every number is in the JSON too)."""
    c, it = plan["config"], plan["per_iteration"]
    langs = plan["per_language"]
    lines = [f"plan for run '{c['name']}' ({c['iterations']} iterations, policy {c['policy']}, device {c['device']})",
             f"prompt tokens measured with the tokenizer of {plan['tokenizer']}"
             + ("" if plan["tokenizer"] == c["policy"] else " (not the policy's: prompt token counts are approximate)"),
             "",
             f"prompts × languages × N = {it['prompts'] // max(len(langs), 1)} × {len(langs)} × {c['n']} = "
             f"{it['prompts'] * c['n']:,} samples per iteration"
             + ("" if it["prompts"] == it["prompts_kept"] else
                f"; {it['samples']:,} after skipping {it['prompts'] - it['prompts_kept']} prompts over "
                "data.max_prompt_tokens"),
             "  " + ", ".join(f"{lang}: {m['prompts']} prompts, ≤{m['max_prompt_tokens_seen']} tokens"
                              for lang, m in langs.items()), "",
             "per iteration (upper bounds):",
             f"  tokens to generate     {it['generated_tokens_max']:>15,}  (N × max_new_tokens={c['max_new_tokens']}; "
             f"+ {it['prefill_tokens']:,} prompt tokens prefilled)",
             f"  tokens to score        {it['scored_tokens_max']:>15,}  (policy and reference, prompt + responses)"]
    if "translated_tokens_max" in it:
        lines.append(f"  tokens to translate    {it['translated_tokens_max']:>15,}")
    lines += [f"  pairs                  {it['pairs_max']:>15,}",
              f"  training steps         {it['training_steps_max']:>15,}  ({c['processes']} process(es))",
              f"  training token slots   {it['training_token_slots_max']:>15,}", ""]
    d = plan["disk"]
    lines += [f"disk: {_size(d['total_bytes'])} for the run directory ({_size(d['per_iteration_bytes'])} per iteration: "
              f"generations {_size(d['generations_bytes'])}, rewards {_size(d['rewards_bytes'])}, pairs "
              f"{_size(d['pairs_bytes'])}, model {_size(d['model_bytes'])})", f"  {d['note']}", ""]
    t = plan["time"]
    if t["available"]:
        per = t["per_iteration_s"]
        lines += [f"time: {t['label']}: {t['total_s'] / 3600:.1f} h for all iterations "
                  f"(per iteration: generate {per['generate'] / 3600:.2f} h, reward {per['reward'] / 3600:.2f} h, "
                  f"train {per['train'] / 3600:.2f} h)",
                  f"  from {t['source']} ({t['device']}, {t['benchmark_params']:,} params, ×{t['scale']:.3g}): "
                  f"{t['method']}"]
    else:
        lines.append(f"time: no estimate: {t['reason']}")
    e = plan["eval"]
    lines.append("")
    if e["available"]:
        lines += [f"icr eval ({e['models']} models × {len(e['languages'])} languages): {e['judge_calls']:,} judge calls, "
                  f"≤{e['judge_input_tokens_max']:,} input + {e['judge_output_tokens']:,} output tokens; "
                  f"≤${e['cost_max']:,.2f} at ${e['price_per_million']['input']:g}/${e['price_per_million']['output']:g} "
                  "per million input/output tokens",
                  f"  + {e['outputs_to_generate']:,} outputs to generate (≤{e['generated_tokens_max']:,} tokens); "
                  f"{e['note']}"]
    else:
        lines.append(f"icr eval: not counted: {e['reason']}")
    return "\n".join(lines)
