"""Pairwise judges: the probability that the first answer beats the second (see `base`), cached on
disk (`cache`), one module per backend, chosen from `JUDGES` by `judge.backend`: `alpaca_eval` (the
paper's: alpaca_eval's annotator plus the language sentence), `openai` (our A/B prompt on an
OpenAI-compatible endpoint), `hf` (that prompt on a local model). Only alpaca_eval's numbers are
comparable with the paper's Table 2."""

from __future__ import annotations

import os
from collections.abc import Callable

from icr.config import JudgeConfig
from icr.eval.judges.base import Judge, JudgeError

DEFAULT_JUDGE_MODELS = {
    "openai": "gpt-4-1106-preview",  # alpaca_eval 2.0's weighted judge, the one its LC GLM was fitted on
    "hf": "embedded:smollm2-135m-instruct",  # offline smoke tests only: far too small to judge well
}


def _openai(config: JudgeConfig, device: str, dtype: str) -> Judge:
    from icr.eval.judges.openai import OpenAIJudge

    return OpenAIJudge(config.model_copy(update={"model": config.model or DEFAULT_JUDGE_MODELS["openai"]}))


def _hf(config: JudgeConfig, device: str, dtype: str) -> Judge:
    from icr.core.models import load_model
    from icr.eval.judges.hf import HFJudge

    return HFJudge(
        load_model(config.model or DEFAULT_JUDGE_MODELS["hf"], device=device, dtype=dtype), config.batch_size
    )


def _alpaca_eval(config: JudgeConfig, device: str, dtype: str) -> Judge:
    from icr.eval.judges.alpaca_eval import AlpacaEvalJudge

    return AlpacaEvalJudge(config)  # the annotator's config names its model when judge.model is not set


JUDGES: dict[str, Callable[[JudgeConfig, str, str], Judge]] = {
    "alpaca_eval": _alpaca_eval,
    "openai": _openai,
    "hf": _hf,
}


OPENAI_URL = "https://api.openai.com/v1"


def credentials_problem(config: JudgeConfig) -> str | None:
    """Why the judge of `config` cannot be asked, found before any output is generated: the API
    judges (alpaca_eval, openai) on OpenAI's endpoint need the key in `judge.api_key_env` (another
    endpoint, e.g. a local server, may need none)."""
    if config.backend == "hf":
        return None
    endpoint = (config.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
    if endpoint != OPENAI_URL or os.environ.get(config.api_key_env):
        return None
    return (
        f"judge.backend={config.backend} asks {OPENAI_URL} and ${config.api_key_env} is not set: set "
        f"{config.api_key_env}, or use --judge hf --judge-model <a local model> (a smoke-test judge, not "
        "comparable with the paper), or --judge-base-url <an OpenAI-compatible server>"
    )


def make_judge(config: JudgeConfig, device: str, dtype: str) -> Judge:
    """The judge of `config.backend`; a local judge loads on `device` with `dtype`."""
    if config.backend not in JUDGES:
        raise JudgeError(f"unknown judge backend {config.backend!r}; known: {', '.join(JUDGES)}")
    return JUDGES[config.backend](config, device, dtype)
