"""The resumable, sharded JSON Lines job (`icr.runtime.jobs.run_job`) on plain items, no model: fixed chunks
whatever is already done, a chunk processed whole, a truncated last line cut off, and the part files
of two processes (played one after the other here) merged in item order."""

from __future__ import annotations

import logging

import pytest

from icr.core.distributed import Shard
from icr.core.io import read_jsonl
from icr.runtime.jobs import leftover_parts, part_path, run_job

ITEMS = list("abcdefg")  # chunk_size 3: chunks [a b c] [d e f] [g]
CHUNKS = [ITEMS[0:3], ITEMS[3:6], ITEMS[6:]]


class Recorder:
    """`process` for run_job: records which chunks it was given; each record depends on its whole
    chunk, as a batched sampler's output depends on its batch partners."""

    def __init__(self):
        self.chunks: list[list[str]] = []

    def __call__(self, chunk: list[str]) -> list[dict]:
        self.chunks.append(list(chunk))
        return [{"id": item, "chunk": "".join(chunk), "position": k} for k, item in enumerate(chunk)]


def job(path, shard: Shard = Shard()) -> tuple[list[dict], Recorder]:
    process = Recorder()
    return run_job(path, ITEMS, key=str, chunk_size=3, process=process, shard=shard), process


@pytest.fixture
def uninterrupted(tmp_path):
    path = tmp_path / "whole" / "job.jsonl"
    path.parent.mkdir()
    records, process = job(path)
    assert process.chunks == CHUNKS
    assert [r["id"] for r in records] == ITEMS and read_jsonl(path) == records
    return path


@pytest.mark.parametrize("kept", [0, 1, 3, 4, 6])
def test_resumed_job_processes_whole_chunks_and_ends_byte_identical(uninterrupted, tmp_path, kept):
    """A kill after `kept` records: every chunk with an item missing is processed again whole (so its
    records are those of the uninterrupted run), chunks already complete are not, nothing is written twice."""
    lines = uninterrupted.read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "job.jsonl"
    path.write_text("".join(lines[:kept]), encoding="utf-8")
    records, process = job(path)
    assert process.chunks == [c for c in CHUNKS if any(ITEMS.index(x) >= kept for x in c)]
    assert path.read_bytes() == uninterrupted.read_bytes()
    assert [r["id"] for r in records] == ITEMS


def test_truncated_last_line_is_cut_off_and_its_record_redone(uninterrupted, tmp_path, caplog):
    lines = uninterrupted.read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "job.jsonl"
    path.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2], encoding="utf-8")  # killed writing "e"
    with caplog.at_level(logging.WARNING, logger="icr.core.io"):
        records, process = job(path)
    assert any("truncated last line" in r.getMessage() for r in caplog.records)
    assert process.chunks == [CHUNKS[1], CHUNKS[2]]
    assert path.read_bytes() == uninterrupted.read_bytes() and len(records) == len(ITEMS)


def test_two_process_shards_write_parts_merged_in_item_order(uninterrupted, tmp_path, monkeypatch):
    """Process 1 of 2 owns chunk 1 and only appends to its own part file; process 0 owns chunks 0
    and 2, folds process 1's part in and leaves the single-process file, with no part left behind.
    The processes run one after the other here, so the barrier has nothing to wait for."""
    monkeypatch.setattr(Shard, "wait", lambda self: None)
    path = tmp_path / "job.jsonl"
    _, second = job(path, Shard(rank=1, world=2))
    assert second.chunks == [CHUNKS[1]]
    assert not path.exists()  # only the main process writes the job file
    assert [r["id"] for r in read_jsonl(part_path(path, Shard(1, 2)))] == CHUNKS[1]
    records, first = job(path, Shard(rank=0, world=2))
    assert first.chunks == [CHUNKS[0], CHUNKS[2]]
    assert [r["id"] for r in records] == ITEMS
    assert path.read_bytes() == uninterrupted.read_bytes()
    assert not leftover_parts(path)
