"""Who does which work item (`icr.core.distributed`): every process, or one per node when each model
is split over the node's GPUs."""

from __future__ import annotations

from icr.core.distributed import NodeShard, Shard, node_shard


def test_one_process_per_node_takes_the_nodes_items_and_the_rest_idle(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    shards = []
    for rank in range(8):  # 2 nodes × 4 processes
        monkeypatch.setenv("LOCAL_RANK", str(rank % 4))
        shards.append(node_shard(Shard(rank, 8)))
    owners = {rank: [k for k in range(6) if s.owns(k)] for rank, s in enumerate(shards)}
    assert owners == {0: [0, 2, 4], 4: [1, 3, 5], **{r: [] for r in (1, 2, 3, 5, 6, 7)}}
    assert [s.takes_work for s in shards] == [True, False, False, False, True, False, False, False]
    assert shards[0].is_main and not shards[4].is_main  # the global main process still merges


def test_one_process_per_node_needs_no_change(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert node_shard(Shard(1, 2)) == Shard(1, 2)
    assert not isinstance(node_shard(Shard()), NodeShard)
