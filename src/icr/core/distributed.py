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

    def wait(self) -> None:
        """Barrier across the launched processes (nothing to wait for in a single process)."""
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def current_shard() -> Shard:
    """The shard of this process: from accelerate when launched with several processes, else (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    import torch
    from accelerate import PartialState

    # joins the process group: nccl on GPUs; gloo on CPU, which accelerate only picks when told
    state = PartialState(cpu=not torch.cuda.is_available())
    return Shard(state.process_index, state.num_processes)
