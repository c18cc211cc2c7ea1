"""`icr plan`'s text for the terminal: the plan dict of `icr.observe.plan.make_plan`, section by section
(every number printed is in the plan's JSON too)."""

from __future__ import annotations

from typing import Any


def _size(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def _work_lines(plan: dict[str, Any]) -> list[str]:
    """Samples per iteration and the upper bounds of one iteration's work."""
    c, it = plan["config"], plan["per_iteration"]
    langs = plan["per_language"]
    lines = [
        f"plan for run '{c['name']}' ({c['iterations']} iterations, policy {c['policy']}, device {c['device']})",
        f"prompt tokens measured with the tokenizer of {plan['tokenizer']}"
        + ("" if plan["tokenizer"] == c["policy"] else " (not the policy's: prompt token counts are approximate)"),
        "",
        f"prompts × languages × N = {it['prompts'] // max(len(langs), 1)} × {len(langs)} × {c['n']} = "
        f"{it['prompts'] * c['n']:,} samples per iteration"
        + (
            ""
            if it["prompts"] == it["prompts_kept"]
            else f"; {it['samples']:,} after skipping {it['prompts'] - it['prompts_kept']} prompts over "
            "data.max_prompt_tokens"
        ),
        "  "
        + ", ".join(
            f"{lang}: {m['prompts']} prompts, ≤{m['max_prompt_tokens_seen']} tokens" for lang, m in langs.items()
        ),
        "",
        "per iteration (upper bounds):",
        f"  tokens to generate     {it['generated_tokens_max']:>15,}  (N × max_new_tokens={c['max_new_tokens']}; "
        f"+ {it['prefill_tokens']:,} prompt tokens prefilled)",
        f"  tokens to score        {it['scored_tokens_max']:>15,}  (policy and reference, prompt + responses)",
    ]
    if "translated_tokens_max" in it:
        lines.append(f"  tokens to translate    {it['translated_tokens_max']:>15,}")
    return lines + [
        f"  pairs                  {it['pairs_max']:>15,}",
        f"  training steps         {it['training_steps_max']:>15,}  ({c['processes']} process(es))",
        f"  training token slots   {it['training_token_slots_max']:>15,}",
        "",
    ]


def _disk_lines(d: dict[str, Any]) -> list[str]:
    return [
        f"disk: {_size(d['total_bytes'])} for the run directory "
        f"({_size(d['per_iteration_bytes'])} per iteration: "
        f"generations {_size(d['generations_bytes'])}, rewards {_size(d['rewards_bytes'])}, pairs "
        f"{_size(d['pairs_bytes'])}, model {_size(d['model_bytes'])})",
        f"  {d['note']}",
        "",
    ]


def _time_lines(t: dict[str, Any]) -> list[str]:
    if not t["available"]:
        return [f"time: no estimate: {t['reason']}"]
    per = t["per_iteration_s"]
    return [
        f"time: {t['label']}: {t['total_s'] / 3600:.1f} h for all iterations "
        f"(per iteration: generate {per['generate'] / 3600:.2f} h, reward {per['reward'] / 3600:.2f} h, "
        f"train {per['train'] / 3600:.2f} h)",
        f"  from {t['source']} ({t['device']}; scaled "
        + ", ".join(f"{stage} ×{x:.3g}" for stage, x in t["scale"].items())
        + f"): {t['method']}",
    ]


def _eval_lines(e: dict[str, Any]) -> list[str]:
    if not e["available"]:
        return [f"icr eval: not counted: {e['reason']}"]
    return [
        f"icr eval ({e['models']} models × {len(e['languages'])} languages): "
        f"{e['judge_calls']:,} judge calls, "
        f"≤{e['judge_input_tokens_max']:,} input + {e['judge_output_tokens']:,} output tokens; "
        f"≤${e['cost_max']:,.2f} at ${e['price_per_million']['input']:g}/"
        f"${e['price_per_million']['output']:g} "
        "per million input/output tokens",
        f"  + {e['outputs_to_generate']:,} outputs to generate (≤{e['generated_tokens_max']:,} tokens); {e['note']}",
    ]


def _override_lines(plan: dict[str, Any]) -> list[str]:
    """The per-iteration settings (`iteration_overrides`); the bounds above use the run's own."""
    entries = plan.get("iteration_overrides", [])
    if not entries:
        return []
    lines = ["per-iteration settings (the bounds above are computed with the run's own settings):"]
    for entry in entries:
        fields = ", ".join(f"{k}={v!r}" for k, v in entry["set"].items())
        lines.append(f"  iteration {entry['iteration']}: {fields}")
    return lines


def _memory_lines(m: dict[str, Any]) -> list[str]:
    if not m.get("projected"):
        return [f"memory: not projected: {m['reason']}"]
    g, r, t = m["generate"], m["reward"], m["train"]
    per_gpu = t["gib_per_gpu"]
    return [
        f"memory per GPU, projected from the parameter count ({m['gpus']} GPUs of {m['gpu_gib']:g} GiB; "
        "weights and training state only):",
        f"  generate (vLLM)   {g['weights_gib_per_gpu']:>7.1f} GiB of weights at tensor_parallel_size "
        f"{g['tensor_parallel_size']} × pipeline_parallel_size {g['pipeline_parallel_size']}",
        f"  reward            {r['weights_gib_per_gpu']:>7.1f} GiB (policy + reference, device_map: "
        f"{r['device_map'] or 'null'})",
        f"  train             DDP {per_gpu['ddp']:.1f} GiB, ZeRO-3/FSDP {per_gpu['zero3_or_fsdp']:.1f} GiB, "
        f"LoRA {per_gpu['lora']:.1f} GiB, LoRA under ZeRO-3 {per_gpu['lora_zero3']:.1f} GiB",
        *(f"  → {line}" for line in m["advice"]),
    ]


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text for the terminal (every number is in the JSON too)."""
    lines = _work_lines(plan) + _override_lines(plan) + _disk_lines(plan["disk"]) + _time_lines(plan["time"])
    return "\n".join([*lines, "", *_memory_lines(plan["memory"]), "", *_eval_lines(plan["eval"])])
