"""Replay of the previous iteration's pairs (`train.replay`): iteration t ≥ 1 trains on its own
pairs P_t plus k = ⌊replay × |P_{t−1}|⌋ pairs of P_{t−1}, drawn without replacement with
`random.Random(f"replay/{train.seed}/{t}")` and kept in their file order after P_t. The same seed,
iteration and files always give the same draw."""

from __future__ import annotations

import math
import random
from pathlib import Path

from icr.core.io import read_jsonl, write_jsonl_atomic


def replay_count(ratio: float, previous: int) -> int:
    """k = ⌊ratio × previous⌋ (a float ratio of an exact product: 0.5 × 7 → 3)."""
    return min(previous, math.floor(ratio * previous + 1e-9))


def replay_draw(previous: list[dict], ratio: float, seed: int, t: int) -> list[dict]:
    """The pairs of iteration t−1 that iteration t replays, in their file order."""
    rng = random.Random(f"replay/{seed}/{t}")
    chosen = sorted(rng.sample(range(len(previous)), replay_count(ratio, len(previous))))
    return [previous[i] for i in chosen]


def write_training_pairs(current: Path, previous: Path, out: Path, ratio: float, seed: int, t: int) -> dict:
    """Write P_t followed by the replayed pairs of P_{t−1} to `out`; returns the counts."""
    own, replayed = read_jsonl(current), replay_draw(read_jsonl(previous), ratio, seed, t)
    write_jsonl_atomic(out, own + replayed)
    return {"own": len(own), "replayed": len(replayed)}
