"""GPUs of each process's generation engine (`icr.runtime.placement`): disjoint, covering, and an
error when a node's processes need more than it has."""

from __future__ import annotations

import pytest

from icr.config import SamplingConfig
from icr.core.errors import ConfigError
from icr.runtime.child_process import InChildProcess
from icr.runtime.placement import engine_devices, engine_environment

GPUS_PER_NODE = 8


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("tensor_parallel", [1, 2, 4, 8])
def test_every_gpu_of_every_node_serves_exactly_one_engine(nodes, tensor_parallel):
    per_node = GPUS_PER_NODE // tensor_parallel
    visible = [str(i) for i in range(GPUS_PER_NODE)]
    for node in range(nodes):
        engines = [engine_devices(visible, local, per_node, tensor_parallel) for local in range(per_node)]
        assert all(len(devices) == tensor_parallel for devices in engines)
        used = [d for devices in engines for d in devices]
        assert sorted(used, key=int) == visible and len(set(used)) == GPUS_PER_NODE, (node, engines)
    # the engines of a node take consecutive GPUs (NVLink neighbours for tensor parallelism)
    assert engine_devices(visible, 1, per_node, tensor_parallel) == visible[tensor_parallel : 2 * tensor_parallel]


def test_a_schedulers_allocation_is_subdivided_not_renumbered():
    allocated = ["4", "5", "6", "7"]  # CUDA_VISIBLE_DEVICES=4,5,6,7 from SLURM
    assert [engine_devices(allocated, r, 2, 2) for r in range(2)] == [["4", "5"], ["6", "7"]]


def test_too_many_processes_for_the_node_is_an_error_with_the_count_to_launch():
    with pytest.raises(
        ConfigError, match="8 processes on this node × 2 GPUs .* = 16 GPUs, but the node has 8: launch 4"
    ):
        engine_devices([str(i) for i in range(8)], 0, 8, 2)


def _launched(monkeypatch, local_rank: int, local_processes: int, visible: str | None = "0,1,2,3,4,5,6,7"):
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    monkeypatch.setenv("WORLD_SIZE", str(local_processes))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_engine_environment_follows_the_local_rank_and_the_parallel_sizes(monkeypatch):
    layout = SamplingConfig(tensor_parallel_size=2, pipeline_parallel_size=2)
    _launched(monkeypatch, 1, 2)
    assert engine_environment(layout) == {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    _launched(monkeypatch, 0, 1)
    assert engine_environment(layout) == {}  # one process: vLLM takes its GPUs from all of them
    _launched(monkeypatch, 1, 2, visible=None)
    assert engine_environment(layout) == {}  # no GPU (this CPU machine's torch sees none)


def test_ray_places_the_workers_and_refuses_a_launch_of_several_processes(monkeypatch):
    ray = SamplingConfig(tensor_parallel_size=8, pipeline_parallel_size=2, distributed_executor_backend="ray")
    _launched(monkeypatch, 0, 1)
    assert engine_environment(ray) == {}
    _launched(monkeypatch, 0, 2)
    with pytest.raises(ConfigError, match="ray spreads one engine over the Ray cluster: run this command once"):
        engine_environment(ray)


def test_a_child_process_starts_with_the_environment_it_is_given(monkeypatch):
    monkeypatch.delenv("ICR_TEST_DEVICES", raising=False)
    import os

    with InChildProcess(dict, description="environment probe", environment={"ICR_TEST_DEVICES": "2,3"}) as child:
        assert child.environment("ICR_TEST_DEVICES", "HOME") == {
            "ICR_TEST_DEVICES": "2,3",
            "HOME": os.environ.get("HOME"),
        }
    assert "ICR_TEST_DEVICES" not in os.environ  # the parent's environment is as it was
