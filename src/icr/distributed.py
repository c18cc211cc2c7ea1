"""Data-parallel stages on accelerate: each process takes a disjoint, deterministic shard.

Launched as `accelerate launch --num_processes P -m icr.cli generate ...`, process r of P handles
the work items k with k % P == r (generation: the fixed prompt chunks; reward: the prompt
records), appends them to its own part file `.{name}.part{r}-of-{P}` beside the stage file, and
the main process merges the parts into the stage file in canonical id order. Every record depends
only on its own inputs and seed, so the merged file is byte-identical whatever P (given the same
kernels and threads per process). Without a launcher everything runs in this process and appends
to the stage file directly, with the same start and end (repair, then canonical order).

Part files left by an interrupted launch, of any P, are folded into the stage file when the
stage starts again, so changing the number of processes between restarts loses nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from icr.data import read_jsonl, write_jsonl_atomic


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


def owned_chunks(items: list, size: int, shard: Shard, done: set[str], key: Callable) -> list[list]:
    """Fixed chunks of `size` items (chunk k always holds the same items, and belongs to process
    k % P) that still have an item not in `done`. A chunk is processed whole, so what a stage
    computes for an item never depends on resuming or on the number of processes."""
    chunks = [items[k : k + size] for k in range(0, len(items), size)]
    return [c for k, c in enumerate(chunks) if shard.owns(k) and any(key(x) not in done for x in c)]


def part_path(path: Path, shard: Shard) -> Path:
    """Where this process appends: the stage file itself in a single process, else its part file."""
    return path if shard.world == 1 else path.with_name(f".{path.name}.part{shard.rank}-of-{shard.world}")


def leftover_parts(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.part*-of-*"))


def merge_parts(path: Path, order: list[str], key: Callable[[dict], str] = lambda r: r["id"]) -> list[dict]:
    """Fold every part file into `path` and rewrite it in `order` (atomically; other ids after
    them), then delete the parts. A record present twice (a part merged just before a crash) is the same record."""
    records = {key(r): r for r in read_jsonl(path, repair=True)}
    parts = leftover_parts(path)
    for part in parts:
        for record in read_jsonl(part, repair=True):
            records.setdefault(key(record), record)
    wanted = set(order)
    # records of ids outside `order` (an evaluation resumed with a smaller --limit) are kept, last
    ordered = [records[k] for k in order if k in records] + [r for k, r in records.items() if k not in wanted]
    write_jsonl_atomic(path, ordered)
    for part in parts:  # only after the merged file is in place: a crash here loses nothing
        part.unlink()
    return ordered


def sharded_jsonl(path: Path, order: list[str], shard: Shard, work: Callable[[Path, set[str]], Any],
                  key: Callable[[dict], str] = lambda r: r["id"]) -> list[dict]:
    """The life of a sharded stage file: repair and merge what an earlier launch left, run
    `work(target, done_ids)` on this process's shard (appending to `target`), merge the parts in
    `order`, and return the whole file on every process."""
    if shard.is_main and (shard.world > 1 or leftover_parts(path)):
        merge_parts(path, order, key)
    shard.wait()
    # With several processes the main one has just repaired the file; others must only read it.
    done = {key(r) for r in read_jsonl(path, repair=shard.world == 1)}
    work(part_path(path, shard), done)
    shard.wait()
    if shard.is_main:
        merged = merge_parts(path, order, key)
    shard.wait()
    return merged if shard.is_main else read_jsonl(path)
