"""Stage 3, pairs: chosen and rejected response per prompt with length control
(`icr.engines.selection` selects; this driver reads the rewards of every language and writes the pairs)."""

from __future__ import annotations

from icr.core.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from icr.core.records import RewardRecord
from icr.engines.selection import select_pairs
from icr.stages.base import Stage, StageContext, language_files


def run_pairs(ctx: StageContext) -> dict:
    """The main process selects (cheap) and writes pairs.jsonl and pairs_stats.json; the others
    wait for its files."""
    run, t = ctx.run, ctx.t
    all_pairs, stats = [], {}
    if run.shard.is_main:
        for lang in ctx.prompts.languages:
            records = [RewardRecord.from_json(r) for r in read_jsonl(run.rewards_dir(t) / f"{lang}.jsonl")]
            pairs, stats[lang] = select_pairs(records, ctx.config.pairs)
            all_pairs += pairs
        write_jsonl_atomic(run.pairs_file(t), [pair.to_json() for pair in all_pairs])
        write_json_atomic(run.pairs_stats_file(t), stats)
    run.shard.wait()
    return {"pairs": len(all_pairs)} if run.shard.is_main else {}


STAGE = Stage(
    name="pairs",
    summary="Stage 3: pick chosen/rejected per prompt with length control; write pairs.jsonl.",
    sections=("seed", "models", "data", "generate", "reward", "pairs"),
    inputs=language_files(lambda run, t: run.rewards_dir(t)),
    outputs=lambda run, t: [run.pairs_file(t), run.pairs_stats_file(t)],
    run=run_pairs,
)
