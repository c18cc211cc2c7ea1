"""gpu-latest.json / gpu-latest.md from a `benchmarks/gpu.py` result, and the projection of the paper
setting's hours per iteration from its measured rates (never from anything else)."""

from __future__ import annotations

from pathlib import Path

from gpu_parts import PART_KEYS, dump

# The paper setting (ICR, section 4): 3,000 prompts × 5 languages × N = 10, two 8B scorers, one DPO epoch
# over at most one pair per prompt and language.
PAPER = {"prompts": 3000, "languages": 5, "n": 10, "scorers": 2, "pairs": 3000 * 5, "epochs": 1}


def projection(doc: dict) -> dict:
    """Hours per ICR iteration on 1 and 8 GPUs:
        generate = responses × mean response tokens / generation tokens/s (vLLM if measured, else HF)
        reward   = scorers × responses × mean response tokens / scoring tokens/s (ours at defaults)
        train    = pairs / pairs per step × seconds per LoRA step
    with responses = prompts × languages × N, the mean response length of the measured workload
    (X-AlpacaEval gpt-4-turbo answers, cut at 2,048 tokens), and 8 GPUs as 8 data-parallel shards
    (linear scaling: an assumption, not a measurement). Missing rates give 'not yet measured'."""
    workload = doc.get("workload") or {}
    mean_tokens = workload["response_tokens"] / (workload["prompts"] * workload["n"]) if workload else None
    gen = doc["generation"]["vllm"] if doc["generation"]["vllm"]["status"] == "measured" else doc["generation"]["hf"]
    score, train = doc["scoring"]["ours"], doc["training"]["lora"]
    responses = PAPER["prompts"] * PAPER["languages"] * PAPER["n"]
    measured = doc["status"] == "measured"

    def hours(part: dict, compute) -> float | None:
        return compute(part) / 3600 if measured and part["status"] == "measured" and mean_tokens else None

    single = {
        "generate": hours(gen, lambda p: responses * mean_tokens / p["tokens_per_s"]),
        "reward": hours(score, lambda p: PAPER["scorers"] * responses * mean_tokens / p["tokens_per_s"]),
        "train": hours(train, lambda p: PAPER["epochs"] * PAPER["pairs"] / p["settings"]["pairs"] * p["seconds"]),
    }
    single["total"] = sum(single.values()) if all(v is not None for v in single.values()) else None
    rows = []
    for gpus in (1, 8):
        for stage, value in single.items():
            label = (
                "not yet measured"
                if value is None
                else f"projected from rates measured on {doc['device']['name']}"
                + ("" if gpus == 1 else ", linear scaling assumed")
            )
            rows.append(
                {"stage": stage, "gpus": gpus, "hours": None if value is None else value / gpus, "label": label}
            )
    return {
        "assumptions": {
            **PAPER,
            "responses": responses,
            "mean_response_tokens": mean_tokens,
            "generation_backend": "vllm" if gen is doc["generation"]["vllm"] else "hf",
            "training": "LoRA step of the main shape",
        },
        "rows": rows,
    }


def _num(value, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def markdown(doc: dict) -> str:
    lines = [f"# GPU benchmark ({doc['schema']}): {doc['status']}", ""]
    if doc["status"] == "not-measured":
        lines += [
            f"**{doc['reason'][0].upper() + doc['reason'][1:]}.**",
            "",
            (
                "`make bench-gpu` (= `python benchmarks/gpu.py --shape llama3-8b`) on an NVIDIA GPU fills "
                "this file and gpu-latest.json; the figures below stay empty until then."
            ),
            "",
        ]
    elif doc["status"] == "dry-run":
        lines += ["Dry run of every code path on a tiny model: the figures say nothing about a GPU.", ""]
    if doc.get("device"):
        v = doc["versions"]
        lines += [
            (
                f"Shape {doc['shape']}, random weights; device {doc['device']['name']}; commit {doc['commit']}; "
                f"torch {v['torch']}, transformers {v['transformers']}, vLLM {v['vllm']}, trl {v['trl']}."
            ),
            (
                f"Matmul rate: {_num(doc['matmul_tflops']['mean'], '{:.3g}')} TFLOP/s (before "
                f"{_num(doc['matmul_tflops']['before'], '{:.3g}')}, "
                f"after {_num(doc['matmul_tflops']['after'], '{:.3g}')})."
            ),
            (
                f"Workload: {doc['workload']['prompts']} prompts × N = {doc['workload']['n']}, "
                f"{doc['workload']['prompt_tokens']} prompt and {doc['workload']['response_tokens']} response "
                f"tokens; tokenizer: {doc['tokenizer']}."
            ),
            "",
        ]
    lines += [
        "| part | status | seconds | tokens/s | share of matmul rate | peak GPU memory (GiB) | settings / reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, keys in PART_KEYS.items():
        for key in keys:
            p = doc[group][key]
            share = None if p["share_of_matmul"] is None else 100 * p["share_of_matmul"]
            note = p["reason"] or ", ".join(f"{k}={v}" for k, v in p["settings"].items())
            lines.append(
                f"| {group}.{key} | {p['status']} | {_num(p['seconds'], '{:.2f}')} | "
                f"{_num(p['tokens_per_s'], '{:.0f}')} | {_num(share, '{:.0f}%')} | "
                f"{_num(p['peak_memory_gib'])} | {note} |"
            )
    if doc["speedup_vs_reference"] is not None:
        lines += ["", f"Scoring, ours at defaults vs the reference approach: {doc['speedup_vs_reference']:.2f}×."]
    proj = doc["projection"]
    lines += [
        "",
        (
            "Hours per ICR iteration, paper setting (3,000 prompts × 5 languages × N = 10, two scorers, "
            "DPO on one pair per prompt and language):"
        ),
        "",
        "| stage | 1 GPU | 8 GPUs | label |",
        "|---|---|---|---|",
    ]
    by = {(r["stage"], r["gpus"]): r for r in proj["rows"]}
    for stage in ("generate", "reward", "train", "total"):
        one, eight = by[stage, 1], by[stage, 8]
        lines.append(
            f"| {stage} | {_num(one['hours'], '{:.2f}')} | {_num(eight['hours'], '{:.2f}')} | "
            f"{one['label']}; 8 GPUs: {eight['label']} |"
        )
    return "\n".join(lines) + "\n"


def write_results(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dump(doc, out / "gpu-latest.json")
    (out / "gpu-latest.md").write_text(markdown(doc), encoding="utf-8")
