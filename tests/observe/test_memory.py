"""Projected memory per GPU (`icr.observe.memory`): the layouts `icr plan` recommends for the sizes
people run, 8B and 70B on one and eight 80 GB GPUs and on several nodes."""

from __future__ import annotations

import pytest

from icr.observe.memory import GIB, memory_plan, training_layout

LLAMA3_8B = 8_030_261_248
LLAMA3_70B = 70_553_706_496


def _plan(params: int, gpus: int, nodes: int = 1) -> dict:
    return memory_plan(params, params, 80, gpus, nodes, utilization=0.9)


def test_8b_on_one_gpu_generates_whole_scores_whole_and_trains_with_lora():
    plan = _plan(LLAMA3_8B, 1)
    assert (plan["generate"]["tensor_parallel_size"], plan["generate"]["pipeline_parallel_size"]) == (1, 1)
    assert plan["reward"]["device_map"] is None
    assert plan["reward"]["weights_gib_per_gpu"] == pytest.approx(2 * 2 * LLAMA3_8B / GIB, abs=0.1)
    assert plan["train"]["choice"] == "lora"  # 8 bytes a parameter (60 GiB) leaves too little for activations
    assert plan["train"]["gib_per_gpu"]["ddp"] == pytest.approx(8 * LLAMA3_8B / GIB, abs=0.1)


def test_8b_on_eight_gpus_runs_eight_engines_and_zero3():
    plan = _plan(LLAMA3_8B, 8)
    assert plan["generate"]["tensor_parallel_size"] == 1 and plan["reward"]["device_map"] is None
    assert plan["train"]["choice"] == "zero3_or_fsdp"
    assert plan["train"]["gib_per_gpu"]["zero3_or_fsdp"] == pytest.approx((8 + 2) * LLAMA3_8B / 8 / GIB, abs=0.1)
    assert "generate: 8 processes per node, one vLLM engine each" in plan["advice"]
    assert "train: configs/accelerate/deepspeed_zero3.yaml (or fsdp.yaml)" in plan["advice"]


def test_70b_on_eight_gpus_splits_every_stage():
    plan = _plan(LLAMA3_70B, 8)
    assert plan["generate"]["tensor_parallel_size"] == 4 and plan["generate"]["fits"]
    assert plan["reward"]["device_map"] == "auto" and plan["reward"]["fits"]
    assert plan["train"]["choice"] == "lora_zero3"  # full ZeRO-3 state with the reference: 82 GiB of 80 per GPU
    assert any("models.device_map: auto" in line for line in plan["advice"])


def test_70b_on_four_nodes_trains_fully_sharded_over_32_gpus():
    plan = _plan(LLAMA3_70B, 8, nodes=4)
    assert plan["train"]["choice"] == "zero3_or_fsdp"
    assert "train: configs/accelerate/multi_node_zero3.yaml (or multi_node_fsdp.yaml)" in plan["advice"]


def test_70b_on_one_gpu_fits_nowhere_and_says_so():
    plan = _plan(LLAMA3_70B, 1)
    assert not plan["generate"]["fits"] and not plan["reward"]["fits"] and plan["train"]["choice"] is None
    assert "train: no layout fits these GPUs, even LoRA: use more or larger GPUs" in plan["advice"]


def test_a_model_over_one_node_is_pipelined_over_nodes_with_ray():
    huge = 400_000_000_000  # 745 GiB of bf16 weights: more than 8 × 36 GiB of engine budget per node
    plan = _plan(huge, 8, nodes=4)
    generate = plan["generate"]
    assert generate["tensor_parallel_size"] == 8 and generate["pipeline_parallel_size"] > 1
    assert generate["distributed_executor_backend"] == "ray" and generate["fits"]


def test_sharding_divides_the_training_state_by_the_processes():
    one, sixteen = training_layout(LLAMA3_8B, 80 * GIB, 1), training_layout(LLAMA3_8B, 80 * GIB, 16)
    assert sixteen["gib_per_gpu"]["zero3_or_fsdp"] == pytest.approx(one["gib_per_gpu"]["zero3_or_fsdp"] / 16, abs=0.1)
