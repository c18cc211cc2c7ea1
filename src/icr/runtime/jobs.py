"""One resumable, sharded JSONL job: generate, reward and eval outputs all run through `run_job`.

A job turns a list of items into one JSON Lines file, one record per item, in item order:

* the items are cut into fixed chunks of `chunk_size` (chunk k always holds the same items and
  belongs to process k % P of P), and a chunk is processed whole even when some of its items are
  already done, so a record never depends on resuming or on the number of processes;
* records are appended one complete line at a time; process r of P > 1 appends to its own part
  file `.{name}.part{r}-of-{P}` beside the job file, and the main process merges the parts into
  the job file in item order. Every record depends only on its own inputs and seed, so the file
  is byte-identical whatever P (given the same kernels and threads per process);
* a truncated last line (a kill mid-write) is cut off, part files left by an interrupted launch of
  any P are folded in when the job starts again, and items already in the file are not redone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from icr.core.distributed import Shard
from icr.core.io import JsonlAppender, read_jsonl, write_jsonl_atomic
from icr.core.progress import progress

Item = TypeVar("Item")


def record_id(record: dict[str, Any]) -> str:
    return str(record["id"])


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


def merge_parts(path: Path, order: list[str], key: Callable[[dict], str] = record_id) -> list[dict]:
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


def sharded_jsonl(
    path: Path,
    order: list[str],
    shard: Shard,
    work: Callable[[Path, set[str]], Any],
    key: Callable[[dict], str] = record_id,
) -> list[dict]:
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


def run_job(
    path: Path,
    items: Sequence[Item],
    key: Callable[[Item], str],
    chunk_size: int,
    process: Callable[[list[Item]], list[dict[str, Any]]],
    shard: Shard = Shard(),
    desc: str = "job",
    unit: str = "item",
) -> list[dict[str, Any]]:
    """Write `process(chunk)` (one record per item of the chunk, each with the item's key as its
    `id`) for every item of `items` not yet in `path`; return the whole file, in item order. The
    items are reported as `desc` in `unit`s through `icr.core.progress` (a bar, log lines or nothing)."""

    def work(target: Path, done: set[str]) -> None:
        mine = owned_chunks(list(items), chunk_size, shard, done, key)
        todo = sum(key(x) not in done for chunk in mine for x in chunk)
        with JsonlAppender(target) as out, progress(todo, desc, unit) as bar:
            for chunk in mine:
                for item, record in zip(chunk, process(chunk)):
                    if key(item) not in done:
                        out.write(record)
                        bar.update(1)

    return sharded_jsonl(path, [key(x) for x in items], shard, work)
