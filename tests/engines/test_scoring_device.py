"""The scorer's device profiles (`icr.engines.scoring.device`) and output layers (`icr.engines.scoring.head`).

The CUDA profile's code paths (many prompts per prefill forward, row-chunked full-vocabulary output
layer, widths bucketed to 64, one read-back from the device) are run here on CPU tensors and held to
the plain computation (`reference_logprobs`: one full forward, full log-softmax):
fp32 within 1e-4 per token, as the CPU path; bf16 within BF16_TOL per token, against the plain
computation in bf16 (the two sum in different orders; the model is scaled so that log-probabilities
spread over tens of nats, and a wrong position or target would be off by far more).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import cuda_profile_on_cpu, random_score_groups
from icr.engines.scoring import device as scoring_device
from icr.engines.scoring.device import (
    PROFILES,
    bytes_per_scored_token,
    cuda_token_budget,
    resolve_token_budget,
)
from icr.engines.scoring.head import row_chunked_logprobs, vocab_sliced_logprobs
from icr.engines.scoring.scorer import reference_logprobs, score_groups

FP32_TOL = 1e-4
BF16_TOL = 0.15  # nats per token (0.0 seen on this CPU); log-probs of this model span about -68..0


def _expected(model, groups):
    return [
        [reference_logprobs(model, g.prompt_ids, c)[s:] if c else [] for c, s in zip(g.completions, g.score_from)]
        for g in groups
    ]


@pytest.fixture(scope="module")
def sharp_model(tokenizer):
    """The tiny model with its embeddings (tied head) scaled up, so log-probabilities spread widely."""
    from helpers import tiny_model

    model = tiny_model(tokenizer, seed=3)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40)
    return model


@pytest.mark.parametrize("budget", [1, 40, 200, 10**6])
def test_cuda_profile_matches_plain_computation_fp32(tiny_lm, monkeypatch, budget):
    groups = random_score_groups(len(tiny_lm.tokenizer))
    want = _expected(tiny_lm.model, groups)
    cuda_profile_on_cpu(monkeypatch, tiny_lm.model.config.vocab_size)
    got = score_groups(tiny_lm.model, groups, token_budget=budget, per_token=True)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a, b, atol=FP32_TOL, rtol=0)


@pytest.mark.parametrize("profile_name", ["cpu", "cuda"])
def test_profiles_match_plain_computation_bf16(sharp_model, tokenizer, monkeypatch, profile_name):
    model = sharp_model.to(torch.bfloat16)
    try:
        groups = random_score_groups(len(tokenizer), seed=2)
        want = _expected(model, groups)
        spread = [x for g in want for row in g for x in row]
        assert min(spread) < -20  # the test can tell a wrong target from a right one
        if profile_name == "cuda":
            cuda_profile_on_cpu(monkeypatch, model.config.vocab_size)
        got = score_groups(model, groups, token_budget=90, per_token=True)
        for g, w in zip(got, want):
            for a, b in zip(g, w):
                np.testing.assert_allclose(a, b, atol=BF16_TOL, rtol=0)
    finally:
        sharp_model.to(torch.float32)


def test_cuda_profile_prefills_many_prompts_per_forward_in_bucketed_shapes(tiny_lm, monkeypatch):
    groups = random_score_groups(len(tiny_lm.tokenizer))
    cuda_profile_on_cpu(monkeypatch, tiny_lm.model.config.vocab_size)
    decoder = tiny_lm.model.get_decoder()
    shapes = []
    real = decoder.forward
    monkeypatch.setattr(
        decoder,
        "forward",
        lambda **kw: shapes.append((tuple(kw["input_ids"].shape), kw.get("past_key_values") is not None)) or real(**kw),
    )
    score_groups(tiny_lm.model, groups, token_budget=10**6)
    prefills = [s for s, cached in shapes if not cached]
    assert prefills == [(len(groups), 128)]  # all five prompts (1..70 tokens) in one forward of width 128
    assert all(s[1] % 64 == 0 for s, _ in shapes)


def test_scorer_reads_back_from_the_device_once(tiny_lm, monkeypatch):
    """No `.item()`, `nonzero()` or per-sub-batch `.tolist()`: the host waits for the device once."""
    groups = random_score_groups(len(tiny_lm.tokenizer))
    calls = {"tolist": 0}
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self):
        calls["tolist"] += 1
        return real_tolist(self)

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation inside the scorer")

    for profile_name in ("cpu", "cuda"):
        calls["tolist"] = 0
        with monkeypatch.context() as patch:
            if profile_name == "cuda":
                cuda_profile_on_cpu(patch, tiny_lm.model.config.vocab_size)
            patch.setattr(torch.Tensor, "tolist", counting_tolist)
            patch.setattr(torch.Tensor, "item", refuse)
            patch.setattr(torch.Tensor, "nonzero", refuse)
            score_groups(tiny_lm.model, groups, token_budget=40)  # several sub-batches
        assert calls["tolist"] == 1, profile_name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_layers_match_full_log_softmax(dtype):
    """Row chunks (GPU) and vocabulary slices (CPU) against log_softmax over the whole head, with a
    softcap, targets at both ends of the vocabulary, a chunk size that does not divide the rows."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 5000, bias=False).to(dtype)
    torch.nn.init.normal_(head.weight, std=1.0)
    config = type("Config", (), {"final_logit_softcapping": 30.0})()
    model = type("Model", (), {"config": config, "get_output_embeddings": lambda self: head})()
    hidden = torch.randn(13, 16).to(dtype)
    targets = torch.randint(0, 5000, (13,))
    targets[0], targets[1] = 0, 4999
    logits = torch.tanh(head(hidden).float() / 30.0) * 30.0
    want = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    tol = 1e-5 if dtype == torch.float32 else 0.1  # bf16: the sliced head rounds logits per slice
    with torch.no_grad():
        for elements in (5000, 3 * 5000, 1 << 30):
            got = row_chunked_logprobs(model, hidden, targets, logit_elements=elements)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # same logits, same rounding
        got = vocab_sliced_logprobs(model, hidden, targets, vocab_chunk=1000, logit_elements=4000)
        torch.testing.assert_close(got, want, atol=tol, rtol=0)


def test_auto_token_budget_from_free_memory(tiny_lm, monkeypatch):
    config = tiny_lm.model.config
    per_token = bytes_per_scored_token(config, torch.bfloat16)
    assert per_token == 2 * (
        config.num_hidden_layers * 2 * config.num_key_value_heads * 16 * 2
        + 8 * config.hidden_size
        + 3 * config.intermediate_size
    )
    llama8b = type(
        "C",
        (),
        {
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
        },
    )()
    assert bytes_per_scored_token(llama8b, torch.bfloat16) == 2 * (32 * 2 * 8 * 128 * 2 + 8 * 4096 + 3 * 14336)
    weights = [torch.zeros(1, dtype=torch.bfloat16)]
    model = type("M", (), {"config": config, "parameters": lambda self: iter(weights)})()
    for free, want in ((0, 4096), (10 * per_token * 5000, 16384), (1 << 50, 65536)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 1 << 50))
        assert cuda_token_budget(model, torch.device("cuda")) == want
    # 'auto' on CPU is the CPU default, resolved once per model and device; an integer is kept
    assert resolve_token_budget("auto", tiny_lm.model, PROFILES["cpu"]) == scoring_device.CPU_TOKEN_BUDGET
    assert resolve_token_budget(123, tiny_lm.model, PROFILES["cuda"]) == 123
    assert scoring_device.profile_for("cpu") is PROFILES["cpu"]
    assert scoring_device.profile_for("cuda:1") is PROFILES["cuda"]
    assert scoring_device.profile_for("mps").auto_token_budget(None, None) == scoring_device.CPU_TOKEN_BUDGET
