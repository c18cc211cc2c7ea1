"""What several test files share, so that no test module imports another: paths, tiny models, the
one factory of run configs and the configs built on it, training pairs, a synthetic benchmark in
X-AlpacaEval's layout, and random scoring groups."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from icr.config import RewardConfig, RunConfig, TrainConfig, load_config
from icr.core.io import write_jsonl_atomic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EMBEDDED = "embedded:smollm2-135m-instruct"
X_ALPACAEVAL = SHARED_DATA / "x-alpacaeval"
needs_shared = pytest.mark.skipif(not X_ALPACAEVAL.exists(), reason="../shared/data is not available")
REFERENCE = "gpt-4-turbo-2024-04-09"

LANGS = ("en", "es")


# ---------------------------------------------------------------- tiny models and run configs


def tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny(tokenizer, folder: Path, seed: int = 0) -> Path:
    model = tiny_model(tokenizer, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def run_config(output_dir: Path, policy: Any, reference: Any, name: str = "run", **overrides: Any) -> RunConfig:
    """A one-iteration run of tiny models on 3 embedded demo prompts in en and es, on the CPU;
    `overrides` are dotted config keys (`**{"generate.n": 3}`)."""
    tree = {
        "name": name,
        "output_dir": str(output_dir),
        "iterations": 1,
        "models.policy": str(policy),
        "models.reference": str(reference),
        "models.device": "cpu",
        "models.dtype": "float32",
        "data.prompts": "embedded:demo",
        "data.languages": list(LANGS),
        "data.limit": 3,
        "generate.n": 2,
        "generate.max_new_tokens": 6,
        "generate.batch_prompts": 1,
        "reward.batch_prompts": 2,
        "pairs.language_filter": "off",
    }
    return load_config(overrides={**tree, **overrides})


def eval_config(prompts: Any, output: Any, **fields: Any):
    """An `icr eval` config for tests: the given fields, the rest as `icr eval` defaults them."""
    from icr.config import EvalConfig

    return EvalConfig(prompts=str(prompts), output=str(output), **fields)


ITERATION_FILES = [
    "iter_{t}/generations/en.jsonl",
    "iter_{t}/generations/es.jsonl",
    "iter_{t}/rewards/en.jsonl",
    "iter_{t}/rewards/es.jsonl",
    "iter_{t}/pairs.jsonl",
    "iter_{t}/pairs_stats.json",
]


def two_iteration_config(out, name, policy, reference):
    """Two iterations of 3 samples per prompt, training included: the run of test_run, test_report and
    test_faults_pipeline."""
    return run_config(
        out,
        policy,
        reference,
        name,
        **{
            "iterations": 2,
            "generate.n": 3,
            "generate.batch_prompts": 2,
            "reward.batch_prompts": 8,
            "train.batch_size": 2,
            "train.grad_accum": 1,
            "train.learning_rate": 1e-3,
            "train.max_length": 96,
            "train.warmup_ratio": 0.0,
        },
    )


# ---------------------------------------------------------------- sampling

MAX_NEW = 6


def generate_config(n=4, max_new_tokens=MAX_NEW, **kw):
    """A GenerateConfig of `n` short samples (test_sampling, test_stages)."""
    from icr.config import GenerateConfig

    return GenerateConfig(n=n, max_new_tokens=max_new_tokens, **kw)


# ---------------------------------------------------------------- training


TOKEN_BUDGET = RewardConfig().token_budget
TRAIN_PAIRS = [
    ("Name a fruit.", "An apple is a fruit.", "Cars are fast."),
    ("What is 2 + 2?", "2 + 2 equals 4.", "It is 5, obviously."),
    ("Nombra un color.", "El azul es un color.", "No sé nada, búscalo."),
    ("Say hello.", "Hello! Nice to meet you.", "hello hello hello hello"),
]


def write_train_pairs(path):
    """TRAIN_PAIRS as a pairs file (the pairs stage's message format)."""
    rows = [
        {
            "id": str(i),
            "lang": "en",
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for i, (p, c, r) in enumerate(TRAIN_PAIRS)
    ]
    write_jsonl_atomic(path, rows)
    return path


def train_config(**kw):
    """A TrainConfig that moves a tiny model visibly in one step, no warm-up, no NLL unless given."""
    base = dict(
        learning_rate=5e-3,
        batch_size=4,
        grad_accum=1,
        epochs=1,
        max_length=64,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        nll_weight=0.0,
    )
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- synthetic benchmark and model outputs


def write_benchmark(root: Path, langs=("en", "de"), n: int = 10) -> Path:
    """root/prompts/{lang}.json and root/reference/<REFERENCE>/{lang}.json, X-AlpacaEval's layout.
    The English reference has no ids, like alpaca_eval's own file."""
    for lang in langs:
        prompts = [
            {"id": i, "dataset": "synthetic", "instruction": f"[{lang}] Question {i}: name a colour."}
            for i in range(1, n + 1)
        ]
        refs = [
            {
                "generator": REFERENCE,
                "dataset": "synthetic",
                "instruction": p["instruction"],
                "output": f"Reference answer {p['id']}: blue" + "." * p["id"],
                **({} if lang == "en" else {"id": p["id"]}),
            }
            for p in prompts
        ]
        for sub, records in (("prompts", prompts), (f"reference/{REFERENCE}", refs)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"{lang}.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return root


def write_outputs(folder: Path, bench: Path, text, langs=("en", "de"), name: str = "model") -> Path:
    """alpaca_eval model_outputs files {lang}.json with output = text(id)."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        prompts = json.loads((bench / "prompts" / f"{lang}.json").read_text(encoding="utf-8"))
        records = [
            {
                "generator": name,
                "dataset": p["dataset"],
                "id": p["id"],
                "instruction": p["instruction"],
                "output": text(p["id"]),
            }
            for p in prompts
        ]
        (folder / f"{lang}.json").write_text(json.dumps(records), encoding="utf-8")
    return folder


def good_or_poor(i: int) -> str:
    """The model's output: 'excellent' (the fake endpoint prefers it) for ids 1..7, 'poor' after."""
    return f"{'excellent' if i <= 7 else 'poor'} answer {i}" + "!" * (2 * i)


OUTPUT_FIELDS = {"generator", "dataset", "id", "instruction", "output"}  # an alpaca_eval model_outputs record


def eval_decoding(**fields):
    """`icr eval`'s paper decoding with `fields` changed."""
    from icr.config import SamplingConfig
    from icr.config.commands import PAPER_EVAL_DECODING

    return SamplingConfig(**{**PAPER_EVAL_DECODING, **fields})


# ---------------------------------------------------------------- scoring


def random_score_groups(vocab: int, seed: int = 1) -> list:
    """Five `ScoreGroup`s of random tokens: long and one-token prompts, an empty completion, scoring
    from inside a completion."""
    from icr.engines.scoring.scorer import ScoreGroup

    rng = np.random.default_rng(seed)
    out = []
    for k, (prompt_len, lengths) in enumerate(
        [(40, [3, 12, 0, 7]), (1, [5, 1, 20]), (17, [9, 9, 2, 30, 4]), (6, [11]), (70, [2, 66])]
    ):
        prompt = rng.integers(0, vocab, size=prompt_len).tolist()
        completions = [rng.integers(0, vocab, size=n).tolist() for n in lengths]
        out.append(ScoreGroup(prompt, completions, [min(n, (k + i) % 3) for i, n in enumerate(lengths)]))
    return out


def cuda_profile_on_cpu(monkeypatch, vocab: int, rows_per_chunk: int = 7):
    """The CUDA profile, applied to a CPU model; the output layer's chunks made small so there are many."""
    from icr.engines.scoring import scorer as scoring
    from icr.engines.scoring.device import PROFILES
    from icr.engines.scoring.head import row_chunked_logprobs

    profile = dataclasses.replace(
        PROFILES["cuda"], output_layer=functools.partial(row_chunked_logprobs, logit_elements=rows_per_chunk * vocab)
    )
    monkeypatch.setattr(scoring, "profile_for", lambda device: profile)
    return profile


def offline_eval_flags(bench: Path, judge_model: Any, cache: Path, max_new_tokens: int = 3) -> list[str]:
    """`icr eval` flags of the offline smoke evaluation: Spanish, judged by a local model (`hf`) on the
    CPU, no length control (it needs all 805 instructions)."""
    return [
        "--languages", "es", "--prompts", str(bench), "--judge", "hf", "--judge-model", str(judge_model),
        "--judge-cache", str(cache), "--no-lc", "--max-new-tokens", str(max_new_tokens), "--device", "cpu",
    ]  # fmt: skip


# ---------------------------------------------------------------- a local OpenAI-compatible endpoint


@contextlib.contextmanager
def local_endpoint(handler) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 (a free port) and yield its `/v1` base URL. The server stops by
    itself after 120 s even if a test hangs, and always at the end of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    guard = threading.Timer(120, server.shutdown)
    guard.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        guard.cancel()
        server.shutdown()
        server.server_close()


def select_json(records: list[dict], config):
    """`icr.engines.selection.select_pairs` on reward rows as pairs.jsonl and rewards/*.jsonl hold
    them (a missing `mode` is filled in), the pairs back as pairs.jsonl rows."""
    from icr.core.records import RewardRecord
    from icr.engines.selection import select_pairs

    typed = [RewardRecord.from_json({"mode": "crosslingual", **r}) for r in records]
    pairs, stats = select_pairs(typed, config)
    return [p.to_json() for p in pairs], stats
