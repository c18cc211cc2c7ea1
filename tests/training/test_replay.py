"""`train.replay`: how many previous pairs are drawn, which, and that the draw is reproducible."""

from __future__ import annotations

import pytest

from icr.core.io import read_jsonl
from icr.core.io import write_jsonl_atomic as write_jsonl
from icr.training.replay import replay_count, replay_draw, write_training_pairs


@pytest.mark.parametrize("ratio, n, k", [(0.5, 7, 3), (0.5, 8, 4), (1.0, 5, 5), (0.3, 10, 3), (0.1, 5, 0)])
def test_count_is_the_floor_of_ratio_times_previous(ratio, n, k):
    assert replay_count(ratio, n) == k


def test_draw_is_a_subset_in_file_order_fixed_by_seed_and_iteration():
    previous = [{"id": str(i)} for i in range(50)]
    a = replay_draw(previous, 0.5, seed=0, t=1)
    assert len(a) == 25 and len({p["id"] for p in a}) == 25
    assert [int(p["id"]) for p in a] == sorted(int(p["id"]) for p in a)
    assert a == replay_draw(previous, 0.5, seed=0, t=1)
    assert a != replay_draw(previous, 0.5, seed=1, t=1) and a != replay_draw(previous, 0.5, seed=0, t=2)


def test_training_file_is_own_pairs_then_replayed(tmp_path):
    own = [{"id": f"own{i}"} for i in range(3)]
    prev = [{"id": f"prev{i}"} for i in range(4)]
    write_jsonl(tmp_path / "own.jsonl", own)
    write_jsonl(tmp_path / "prev.jsonl", prev)
    counts = write_training_pairs(tmp_path / "own.jsonl", tmp_path / "prev.jsonl", tmp_path / "out.jsonl", 0.5, 0, 1)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert counts == {"own": 3, "replayed": 2} and out[:3] == own and all(p in prev for p in out[3:])
