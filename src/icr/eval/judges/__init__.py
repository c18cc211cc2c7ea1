"""Pairwise judges: the probability that answer A beats answer B (see `base`), cached on disk
(`cache`), one module per backend (`openai`, `hf`), chosen from `JUDGES` by `judge.backend`."""

from __future__ import annotations

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
    from icr.eval.judges.hf import HFJudge
    from icr.models import load_model

    return HFJudge(load_model(config.model or DEFAULT_JUDGE_MODELS["hf"], device=device, dtype=dtype),
                   config.batch_size)


JUDGES: dict[str, Callable[[JudgeConfig, str, str], Judge]] = {"openai": _openai, "hf": _hf}


def make_judge(config: JudgeConfig, device: str, dtype: str) -> Judge:
    """The judge of `config.backend`; a local judge loads on `device` with `dtype`."""
    if config.backend not in JUDGES:
        raise JudgeError(f"unknown judge backend {config.backend!r}; known: {', '.join(JUDGES)}")
    return JUDGES[config.backend](config, device, dtype)
