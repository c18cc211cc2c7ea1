"""Which GPUs the generation engine of each launched process may use.

Under `accelerate launch` with P processes per node, each process runs its own vLLM engine in a
child process (`icr.runtime.child_process`) on its share of the prompts. The engine needs
G = tensor_parallel_size × pipeline_parallel_size GPUs, and the P engines of a node must not share
one: the child of local process r sees only the GPUs r·G … r·G + G − 1 of the node's visible list,
through `CUDA_VISIBLE_DEVICES` (vLLM then numbers them from 0). So 8 GPUs hold 8 engines at TP 1,
4 at TP 2, 1 at TP 8; launch P = GPUs per node / G processes per node.

With `distributed_executor_backend: ray` one engine spans the GPUs of a Ray cluster, which Ray
places: icr is launched once and its child sees every GPU.
"""

from __future__ import annotations

import os

from icr.config import SamplingConfig
from icr.core.distributed import local_process
from icr.core.errors import ConfigError


def engine_devices(visible: list[str], local_rank: int, local_processes: int, per_engine: int) -> list[str]:
    """The GPUs (entries of the node's `visible` list) of local process `local_rank`'s engine, or an
    error when the node's processes need more GPUs than it has."""
    needed = local_processes * per_engine
    if needed > len(visible):
        raise ConfigError(
            f"{local_processes} processes on this node × {per_engine} GPUs per vLLM engine "
            f"(generate.tensor_parallel_size × pipeline_parallel_size) = {needed} GPUs, but the node has "
            f"{len(visible)}: launch {max(len(visible) // per_engine, 1)} processes per node, or lower the "
            "parallel sizes"
        )
    return visible[local_rank * per_engine : (local_rank + 1) * per_engine]


def node_devices() -> list[str]:
    """The GPUs this process may use: its CUDA_VISIBLE_DEVICES (a scheduler's allocation), else every
    GPU torch sees, else none."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def engine_environment(config: SamplingConfig) -> dict[str, str]:
    """The environment of this process's engine child: its `CUDA_VISIBLE_DEVICES`, or nothing to
    change (no GPU, one process, or Ray placing the workers)."""
    if config.distributed_executor_backend == "ray":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "generate.distributed_executor_backend: ray spreads one engine over the Ray cluster: run this "
                "command once (without accelerate launch), or use mp with one engine per process"
            )
        return {}
    visible = node_devices()
    local_rank, local_processes = local_process()
    if not visible or local_processes == 1:
        return {}
    per_engine = config.tensor_parallel_size * config.pipeline_parallel_size
    return {"CUDA_VISIBLE_DEVICES": ",".join(engine_devices(visible, local_rank, local_processes, per_engine))}
