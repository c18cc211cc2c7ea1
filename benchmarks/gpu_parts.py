"""The measured parts of `benchmarks/gpu.py` (see its docstring for what each measures and the schema)."""

from __future__ import annotations

import functools
import gc
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

PART_KEYS = {
    "scoring": ("ours", "reference", "ceiling"),
    # hf / hf_paged: at the default chunk (8 prompts × N = 10 = 80 rows); *_320: 32 prompts × 10 rows
    "generation": ("hf", "hf_320", "hf_paged", "hf_paged_320", "vllm"),
    "training": ("lora", "full"),
}


def not_measured_part(reason: str) -> dict:
    return {
        "status": "not-measured",
        "reason": reason,
        "seconds": None,
        "tokens": None,
        "tokens_per_s": None,
        "flops": None,
        "share_of_matmul": None,
        "peak_memory_gib": None,
        "settings": {},
    }


def skipped(reason: str) -> dict:
    return {**not_measured_part(reason), "status": "skipped"}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, func) -> tuple[float, float | None]:
    """Seconds `func()` takes (the device drained before and after) and its peak GPU memory (GiB)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    func()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return seconds, peak


def measured(seconds: float, peak: float | None, tokens: int, flops: float | None, **settings) -> dict:
    return {
        "status": "measured",
        "reason": None,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "flops": flops,
        "share_of_matmul": None,
        "peak_memory_gib": peak,
        "settings": settings,
    }


def guarded(func):
    """A part that fails is recorded as skipped with the error, and the others still run."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ImportError as err:
            return skipped(f"not installed: {err}")
        except Exception as err:  # noqa: BLE001 - recorded in the results, not lost
            traceback.print_exc()
            return skipped(f"failed: {type(err).__name__}: {err}")

    return run


def matmul_tflops(device: str) -> float:
    """bf16 8192³ on CUDA, fp32 1024³ on CPU; TFLOP/s."""
    size, dtype, repeats = (8192, torch.bfloat16, 20) if device == "cuda" else (1024, torch.float32, 10)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds, _ = timed(device, lambda: [a @ b for _ in range(repeats)])
    return 2 * size**3 * repeats / seconds / 1e12


def body_params(model) -> int:
    """Parameters a token passes through, the output layer and embeddings excluded."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return sum(p.numel() for p in model.parameters()) - embed.numel() - (0 if head is embed else head.numel())


def attention_flops(config, contexts: int) -> float:
    """Causal attention over `contexts` = Σ over tokens of the number of keys each attends to."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 4.0 * config.num_hidden_layers * config.num_attention_heads * head_dim * contexts


def scoring_flops(model, work: list[dict]) -> float:
    """FLOPs that must be done to score the workload: each prompt once, each response token once
    (attending to its prompt and its own earlier tokens), the output layer at scored positions."""
    config = model.config
    tokens = contexts = scored = 0
    for w in work:
        p = len(w["prompt_ids"])
        tokens += p
        contexts += p * (p + 1) // 2
        for c in w["response_ids"]:
            tokens += len(c)
            scored += len(c)
            contexts += len(c) * p + len(c) * (len(c) + 1) // 2
    return (
        2.0 * body_params(model) * tokens
        + 2.0 * config.hidden_size * config.vocab_size * scored
        + attention_flops(config, contexts)
    )


@torch.no_grad()
def reference_scoring(model, batches: list[list[tuple[list[int], list[int]]]], device: str) -> None:
    """The reference approach: right-padded batches of 3 (prompt + response), full forward,
    full-vocabulary log_softmax over every position, then the response tokens' values summed."""
    for batch in batches:
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.tensor([p + c + [0] * (width - len(p) - len(c)) for p, c in batch], device=device)
        mask = torch.tensor(
            [[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in batch], device=device
        )
        logps = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for row, (p, c) in enumerate(batch):
            logps[row, len(p) - 1 : len(p) + len(c) - 1].gather(1, ids[row, len(p) : len(p) + len(c), None]).sum()
        del logps


@guarded
def score_ours(model, work, device) -> dict:
    from icr.config import RewardConfig
    from icr.engines.scoring.scorer import ScoreGroup, Scorer

    defaults = RewardConfig()
    groups = [ScoreGroup(w["prompt_ids"], w["response_ids"]) for w in work]
    chunk = defaults.batch_prompts
    chunks = [groups[k : k + chunk] for k in range(0, len(groups), chunk)]
    scorer = Scorer(model, defaults.token_budget)  # one per job, as the reward stage keeps it
    scorer.score_groups(chunks[0][:2])  # warm-up
    seconds, peak = timed(device, lambda: [scorer.score_groups(c) for c in chunks])
    budget = scorer.token_budget
    tokens = sum(len(c) for w in work for c in w["response_ids"])
    return measured(
        seconds,
        peak,
        tokens,
        scoring_flops(model, work),
        token_budget=budget,
        batch_prompts=chunk,
        profile=scorer.profile.name,
    )


@guarded
def score_reference(model, work, device) -> dict:
    rows = [(w["prompt_ids"], c) for w in work for c in w["response_ids"]]
    batches = [rows[k : k + 3] for k in range(0, len(rows), 3)]
    reference_scoring(model, batches[:1], device)
    seconds, peak = timed(device, lambda: reference_scoring(model, batches, device))
    tokens = sum(len(c) for _, c in rows)
    return measured(seconds, peak, tokens, scoring_flops(model, work), batch_rows=3)


@guarded
@torch.no_grad()
def forward_ceiling(model, device, shape: tuple[int, int]) -> dict:
    rows, width = shape
    ids = torch.randint(0, model.config.vocab_size, (rows, width), device=device)
    decoder = model.get_decoder()
    decoder(input_ids=ids[:, :64])
    seconds, peak = timed(device, lambda: decoder(input_ids=ids))
    flops = 2.0 * body_params(model) * rows * width + attention_flops(model.config, rows * width * (width + 1) // 2)
    return measured(seconds, peak, rows * width, flops, rows=rows, width=width, mask=None)


def run_scoring(model, work, device, ceiling_shape) -> dict:
    return {
        "ours": score_ours(model, work, device),
        "reference": score_reference(model, work, device),
        "ceiling": forward_ceiling(model, device, ceiling_shape),
    }


@guarded
def generate_local(model, tokenizer, work, device, new_tokens, backend: str = "hf", prompts: int | None = None) -> dict:
    """One chunk of `prompts` prompts × N samples (default: the config's chunk) with an in-process backend."""
    from icr.config import GenerateConfig
    from icr.core.models import LoadedModel
    from icr.engines.sampling import make_generator

    config = GenerateConfig(max_new_tokens=new_tokens, backend=backend)
    lm = LoadedModel(model, tokenizer, "random", "random")
    generator = make_generator("random", config, models=None, load=lambda spec: lm)
    texts = [w["instruction"] for w in work[: prompts or config.batch_prompts]]
    generator.sample_batch(texts[:1], 2, [0])  # warm-up
    out = []
    seconds, peak = timed(device, lambda: out.extend(generator.sample_batch(texts, config.n, list(range(len(texts))))))
    tokens = sum(s.response_tokens + (0 if s.truncated else 1) for rows in out for s in rows)
    return measured(
        seconds, peak, tokens, None, backend=backend, prompts=len(texts), n=config.n, max_new_tokens=new_tokens
    )


@guarded
def generate_vllm(model, tokenizer, work, device, new_tokens) -> dict:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return skipped("vLLM is not installed")
    if device != "cuda":
        return skipped("vLLM needs a GPU")
    from icr.config import GenerateConfig
    from icr.engines.sampling.vllm import VLLMGenerator
    from icr.runtime.child_process import InChildProcess

    config = GenerateConfig(max_new_tokens=new_tokens, backend="vllm")
    texts = [w["instruction"] for w in work[: config.batch_prompts]]
    with tempfile.TemporaryDirectory() as folder:
        model.config.save_pretrained(folder)  # random weights: vLLM's dummy loader, nothing written
        tokenizer.save_pretrained(folder)
        factory = functools.partial(VLLMGenerator, load_format="dummy")
        with InChildProcess(factory, folder, config, "bfloat16", description="vLLM bench") as generator:
            generator.sample_batch(texts[:1], 2, [0])
            out = []
            seconds, _ = timed(
                device, lambda: out.extend(generator.sample_batch(texts, config.n, list(range(len(texts)))))
            )
    tokens = sum(s.response_tokens + (0 if s.truncated else 1) for rows in out for s in rows)
    return measured(
        seconds,
        None,
        tokens,
        None,
        prompts=len(texts),
        n=config.n,
        max_new_tokens=new_tokens,
        gpu_memory_utilization=config.gpu_memory_utilization,
        note="peak memory: vLLM's own process",
    )


def run_generation(model, tokenizer, work, device, new_tokens, shape) -> dict:
    """HF `generate` and continuous batching (hf-paged) at 80 and 320 rows, then vLLM, in one run."""
    parts = {}
    for backend in ("hf", "hf-paged"):
        key = backend.replace("-", "_")
        parts[key] = generate_local(model, tokenizer, work, device, new_tokens, backend)
        parts[f"{key}_320"] = generate_local(model, tokenizer, work, device, new_tokens, backend, prompts=32)
    return {**parts, "vllm": generate_vllm(model, tokenizer, work, device, new_tokens)}


@guarded
def train_step(model, tokenizer, work, device, lora: bool, max_length: int) -> dict:
    import importlib.util

    missing = [m for m in ("trl", "datasets", "peft" if lora else "trl") if importlib.util.find_spec(m) is None]
    if missing:
        return skipped(f"needs {', '.join(sorted(set(missing)))} (not installed)")
    from icr.config import LoraConfig, TrainConfig
    from icr.core.models import LoadedModel
    from icr.training.losses import PairLogps
    from icr.training.trainer import dpo_trainer, preference_dataset

    config = TrainConfig(lora=LoraConfig(enabled=lora), grad_accum=1, max_length=max_length)
    pairs = []
    for w in work:
        for k in range(0, len(w["responses"]) - 1, 2):
            pairs.append(
                {
                    "prompt": [{"role": "user", "content": w["instruction"]}],
                    "chosen": [{"role": "assistant", "content": w["responses"][k]}],
                    "rejected": [{"role": "assistant", "content": w["responses"][k + 1]}],
                }
            )
    pairs = pairs[: 2 * config.batch_size]
    ref = [PairLogps(0.0, 0.0)] * len(pairs)  # values do not change the speed
    lm = LoadedModel(model, tokenizer, "random", "random")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = dpo_trainer(lm, preference_dataset(tokenizer, pairs, ref, config), config, scratch)
        batches = list(trainer.get_train_dataloader())
        trained = trainer.model
        trained.train()
        trainer.current_gradient_accumulation_steps = 1
        optimizer = trainer.create_optimizer()

        def step(batch):
            trainer.training_step(trained, batch)
            optimizer.step()
            optimizer.zero_grad()

        step(batches[0])  # warm-up: optimiser state, allocations
        seconds, peak = timed(device, lambda: step(batches[-1]))
    tokens = int(batches[-1]["attention_mask"].sum()) if "attention_mask" in batches[-1] else None
    params = sum(p.numel() for p in model.parameters())
    flops = (4.0 if lora else 6.0) * params * tokens if tokens else None
    model.eval()
    return measured(
        seconds,
        peak,
        tokens or 0,
        flops,
        pairs=config.batch_size,
        lora=lora,
        params=params,
        max_length=max_length,
        bound="4·P per token (LoRA)" if lora else "6·P per token",
    )


def run_training(model, tokenizer, work, device, build_full, max_length: int) -> dict:
    lora = train_step(model, tokenizer, work, device, lora=True, max_length=max_length)
    full_model = build_full()
    try:
        full = train_step(full_model, tokenizer, work, device, lora=False, max_length=max_length)
    finally:
        del full_model
        gc.collect()
    return {"lora": lora, "full": full}


def dump(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
