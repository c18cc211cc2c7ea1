"""`generate.vllm_args`: any other vLLM engine argument, checked against vLLM's `EngineArgs`.

icr sets some engine arguments from its own fields (`ICR_SET_VLLM_ARGS`); the rest pass through as
given. The check runs when the config is built if vLLM is installed there, and again in the
process that starts the engine (`check_vllm_args(..., require_vllm=True)`), so a typo is one clear
error either way, never a TypeError deep inside vLLM.
"""

from __future__ import annotations

import difflib
from typing import Any

# engine arguments icr sets: the field to use instead
ICR_SET_VLLM_ARGS = {
    "model": "models.policy (the model being sampled)",
    "dtype": "models.dtype",
    "trust_remote_code": "models.trust_remote_code",
    "tensor_parallel_size": "generate.tensor_parallel_size",
    "pipeline_parallel_size": "generate.pipeline_parallel_size",
    "distributed_executor_backend": "generate.distributed_executor_backend",
    "gpu_memory_utilization": "generate.gpu_memory_utilization",
    "enable_prefix_caching": "icr (on: the n samples of a prompt share its cache)",
}


def engine_arg_names() -> set[str] | None:
    """The fields of vLLM's EngineArgs, or None when vLLM is not installed here."""
    try:
        import dataclasses

        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return None
    return {f.name for f in dataclasses.fields(EngineArgs)}


def check_vllm_args(args: dict[str, Any], require_vllm: bool = False) -> dict[str, Any]:
    """Refuse the arguments icr sets (naming the icr field) and, where vLLM is importable (always
    with `require_vllm`), the ones EngineArgs does not have (with the closest name)."""
    problems = [f"{key!r} is set by icr: use {ICR_SET_VLLM_ARGS[key]}" for key in args if key in ICR_SET_VLLM_ARGS]
    known = engine_arg_names() if args else None
    if known is None and require_vllm and args:
        raise RuntimeError("generate.vllm_args needs vLLM: pip install 'icr[vllm]' (GPU machines)")
    for key in args:
        if known is not None and key not in known and key not in ICR_SET_VLLM_ARGS:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            problems.append(
                f"{key!r} is not a vLLM engine argument" + (f" (did you mean {close[0]!r}?)" if close else "")
            )
    if problems:
        raise ValueError("; ".join(problems))
    return args
