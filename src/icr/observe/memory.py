"""GPU memory per stage, projected from the parameter count alone: which layout fits which GPUs.

Every figure is weights and training state in bf16 (2 bytes a parameter), never measured: no
activations, no KV cache beyond the share reserved for it, no CUDA context. So a layout marked as
fitting still needs its batch sizes checked on the machine (`make bench-gpu`).

* generate (vLLM): the engine's weights are split over tensor × pipeline parallel GPUs. A layout
  fits when the weights take at most half of the engine's memory (`generate.gpu_memory_utilization`
  of a GPU), leaving the other half to the KV cache that batches the samples.
* reward: the policy and the reference score together, 2 × 2 bytes a parameter; with
  `models.device_map` they are split over the node's GPUs (accelerate's big-model inference).
* train: weights, gradients and AdamW's two moments, all in the model's bf16 (icr trains in bf16
  on GPUs, without fp32 master weights): 8 bytes a parameter on every GPU under DDP, divided by the
  number of processes under ZeRO-3/FSDP; LoRA keeps only the frozen weights (2 bytes a parameter,
  also divided under ZeRO-3) and the small adapter. Under DDP the reference log-probs are computed
  before training; under ZeRO-3/FSDP a bf16 reference sharded like the policy sits beside it (2
  bytes a parameter, divided: `icr.training.sharding`); with LoRA the policy without its adapter is
  the reference. A layout fits when this state takes at
  most 60% of a GPU: activations of 2,400-token responses need the rest.
"""

from __future__ import annotations

from typing import Any

GIB = 1024**3
BF16 = 2
TRAIN_BYTES_PER_PARAM = 8  # bf16 weights + gradients + AdamW exp_avg + exp_avg_sq
USABLE = 0.9  # of a GPU's memory, for the scorers (CUDA context, fragmentation)
TRAIN_STATE_SHARE = 0.6  # of a GPU's memory, for the training state (the rest: activations)


def _gib(n_bytes: float) -> float:
    return round(n_bytes / GIB, 1)


def generation_layout(params: int, gpu_bytes: float, gpus_per_node: int, nodes: int, utilization: float) -> dict:
    """The smallest tensor-parallel size (a power of 2 up to the node's GPUs) whose weight share
    leaves half of the engine's memory to the KV cache; beyond one node, pipeline stages over nodes
    (vLLM's Ray executor)."""
    weights = params * BF16
    budget = 0.5 * utilization * gpu_bytes
    tp = 1
    while weights / tp > budget and tp < gpus_per_node:
        tp *= 2
    pp = 1
    while weights / (tp * pp) > budget and pp < nodes:
        pp += 1
    layout = {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "weights_gib_per_gpu": _gib(weights / (tp * pp)),
        "fits": weights / (tp * pp) <= budget,
    }
    if pp > 1:
        layout["distributed_executor_backend"] = "ray"
    return layout


def scoring_layout(policy_params: int, reference_params: int, gpu_bytes: float, gpus_per_node: int) -> dict[str, Any]:
    """Both scorers in one process (`device_map: null`), or split over the node's GPUs (`auto`)."""
    weights = (policy_params + reference_params) * BF16
    if weights <= USABLE * gpu_bytes:
        return {"device_map": None, "weights_gib_per_gpu": _gib(weights)}
    per_gpu = weights / gpus_per_node
    return {"device_map": "auto", "weights_gib_per_gpu": _gib(per_gpu), "fits": per_gpu <= USABLE * gpu_bytes}


def training_layout(params: int, gpu_bytes: float, processes: int) -> dict[str, Any]:
    """Per-GPU bytes of each training layout, and the first that fits (module doc): DDP, ZeRO-3/FSDP
    over all processes, LoRA, LoRA under ZeRO-3."""
    full, frozen = params * TRAIN_BYTES_PER_PARAM, params * BF16
    options = {
        "ddp": _gib(full),
        "zero3_or_fsdp": _gib((full + frozen) / processes),  # + the reference, sharded alike
        "lora": _gib(frozen),
        "lora_zero3": _gib(frozen / processes),
    }
    limit = TRAIN_STATE_SHARE * gpu_bytes / GIB
    choice = next((name for name, gib in options.items() if gib <= limit), None)
    return {"gib_per_gpu": options, "choice": choice}


ACCELERATE_CONFIGS = {
    ("ddp", False): "configs/accelerate/multi_gpu.yaml",
    ("ddp", True): "configs/accelerate/multi_node_ddp.yaml",
    ("zero3_or_fsdp", False): "configs/accelerate/deepspeed_zero3.yaml (or fsdp.yaml)",
    ("zero3_or_fsdp", True): "configs/accelerate/multi_node_zero3.yaml (or multi_node_fsdp.yaml)",
    ("lora", False): "configs/accelerate/multi_gpu.yaml with train.lora.enabled: true",
    ("lora", True): "configs/accelerate/multi_node_ddp.yaml with train.lora.enabled: true",
    ("lora_zero3", False): "configs/accelerate/deepspeed_zero3.yaml with train.lora.enabled: true, "
    "train.lora.merge: false",
    ("lora_zero3", True): "configs/accelerate/multi_node_zero3.yaml with train.lora.enabled: true, "
    "train.lora.merge: false",
}


def memory_plan(
    policy_params: int, reference_params: int, gpu_gib: float, gpus_per_node: int, nodes: int, utilization: float
) -> dict[str, Any]:
    """Projected memory per GPU of each stage on `nodes` × `gpus_per_node` GPUs of `gpu_gib`, with
    the settings that fit (see the module doc for what is counted)."""
    gpu_bytes = gpu_gib * GIB
    generate = generation_layout(policy_params, gpu_bytes, gpus_per_node, nodes, utilization)
    reward = scoring_layout(policy_params, reference_params, gpu_bytes, gpus_per_node)
    train = training_layout(policy_params, gpu_bytes, gpus_per_node * nodes)
    per_engine = generate["tensor_parallel_size"] * generate["pipeline_parallel_size"]
    advice = []
    if not generate["fits"]:
        advice.append("generate: the policy's weights leave no room for the KV cache on these GPUs")
    elif per_engine > 1:
        settings = ", ".join(
            f"generate.{k}: {v}" for k, v in generate.items() if k not in ("weights_gib_per_gpu", "fits") and v != 1
        )
        advice.append(f"generate: the policy does not leave room for the KV cache on one GPU: {settings}")
    if generate["fits"] and per_engine <= gpus_per_node:
        engines = max(gpus_per_node // per_engine, 1)
        advice.append(f"generate: {engines} process{'es' if engines > 1 else ''} per node, one vLLM engine each")
    if reward["device_map"]:
        fits = "" if reward["fits"] else " (still more than a GPU holds: use larger GPUs)"
        advice.append(f"reward: the two scorers do not fit one GPU: models.device_map: auto{fits}")
    if train["choice"] is None:
        advice.append("train: no layout fits these GPUs, even LoRA: use more or larger GPUs")
    else:
        advice.append(f"train: {ACCELERATE_CONFIGS[(train['choice'], nodes > 1)]}")
    return {
        "projected": True,
        "gpu_gib": gpu_gib,
        "gpus": f"{nodes} × {gpus_per_node}",
        "generate": generate,
        "reward": reward,
        "train": train,
        "advice": advice,
    }
