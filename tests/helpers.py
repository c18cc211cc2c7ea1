"""What several test files share: the one factory of tiny run configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from icr.config import RunConfig, load_config

LANGS = ("en", "es")


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
