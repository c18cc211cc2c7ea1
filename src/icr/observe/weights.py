"""A model's size from its safetensors headers alone: what `icr plan` sizes memory and time with,
without loading or downloading a weight."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from icr.core.errors import ModelLoadError

SAFETENSORS_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1}


def weights_info(spec: str) -> dict[str, Any]:
    """Parameter count and bytes of a model's safetensors weights, read from their headers only (no
    weight is loaded or downloaded): local folders, embedded models, a Hub id's cached snapshot,
    and online a Hub id's remote headers (`huggingface_hub.get_safetensors_metadata`, at its
    revision). `known: False` with the reason otherwise."""
    from safetensors import safe_open

    from icr.core.hub import cached_snapshot, is_hub_spec, offline, split_revision
    from icr.core.models import resolve_model_path

    if is_hub_spec(spec) and cached_snapshot(*split_revision(spec)) is None and not offline():
        return remote_weights_info(spec)
    try:
        folder = Path(resolve_model_path(spec))
    except ModelLoadError as err:
        return {"known": False, "reason": str(err)}
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return {"known": False, "reason": f"{spec}: no safetensors files in {folder}"}
    params = 0
    for f in files:
        with safe_open(f, framework="numpy") as tensors:
            params += sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())  # noqa: SIM118
    return {"known": True, "params": params, "bytes": sum(f.stat().st_size for f in files)}


def remote_weights_info(spec: str) -> dict[str, Any]:
    """`weights_info` of a Hub model that is not cached, from the safetensors headers on the Hub."""
    from huggingface_hub import get_safetensors_metadata

    from icr.core.hub import split_revision

    repo_id, revision = split_revision(spec)
    try:
        counts = get_safetensors_metadata(repo_id, revision=revision).parameter_count
    except Exception as err:  # no network, no safetensors, gated: the plan goes on without sizes
        return {"known": False, "reason": f"{spec}: safetensors headers not readable from the Hub ({err})"}
    size = sum(n * SAFETENSORS_DTYPE_BYTES.get(dtype, 2) for dtype, n in counts.items())
    return {"known": True, "params": sum(counts.values()), "bytes": size}
