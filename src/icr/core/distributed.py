"""Data parallelism on accelerate: this process's place among the launched ones.

Launched as `accelerate launch --num_processes P -m icr.cli generate ...`, process r of P takes
the work items k with k % P == r (`icr.runtime.jobs` cuts the items into fixed chunks and merges what
every process wrote).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """This process's place among the launched ones: work item k is ours iff k % world == rank."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, k: int) -> bool:
        return k % self.world == self.rank

    @property
    def takes_work(self) -> bool:
        """Whether this process owns any work at all (and so needs the stage's models)."""
        return True

    def wait(self) -> None:
        """Barrier across the launched processes (nothing to wait for in a single process)."""
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


@dataclass(frozen=True)
class NodeShard(Shard):
    """The work of processes that split each model over their node's GPUs (`models.device_map`):
    the node's first process takes the node's items (k % nodes == node); the node's other
    processes take none, load nothing, and still join every barrier. `rank`/`world` stay the
    global ones (part files, the main process)."""

    node: int = 0
    nodes: int = 1
    first_on_node: bool = True

    def owns(self, k: int) -> bool:
        return self.first_on_node and k % self.nodes == self.node

    @property
    def takes_work(self) -> bool:
        return self.first_on_node


def local_process() -> tuple[int, int]:
    """(local rank, processes on this node), as torchrun / accelerate launch set them; (0, 1) alone."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def node_shard(shard: Shard) -> Shard:
    """`shard` with one working process per node (`NodeShard`), from `local_process()`; `shard`
    itself when each node runs one process."""
    local_rank, local_world = local_process()
    if shard.world == 1 or local_world == 1:
        return shard
    return NodeShard(shard.rank, shard.world, shard.rank // local_world, shard.world // local_world, local_rank == 0)


def current_shard() -> Shard:
    """The shard of this process: from accelerate when launched with several processes, else (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    # joins the process group: nccl on GPUs; gloo on CPU, which accelerate only picks when told
    state = PartialState(cpu=not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes)
