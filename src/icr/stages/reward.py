"""Stage 2, reward: every response scored with the implicit reward β·log π^t/π_ref under the
rewarding mode (`icr.engines.rewarding` scores; this driver reads the generations and writes the records)."""

from __future__ import annotations

from pathlib import Path

from icr.config import RewardConfig
from icr.core.distributed import Shard, node_shard
from icr.core.io import read_jsonl
from icr.core.records import GenerationRecord
from icr.engines.rewarding import STRATEGIES, RewardingStrategy, make_strategy, reward_records
from icr.engines.scoring.scorer import Scorer
from icr.runtime.jobs import run_job
from icr.stages.base import Stage, StageContext, language_files


def reward_language(
    generations: list[dict],
    english: dict[str, str],
    out_file: Path,
    *,
    policy: Scorer,
    reference: Scorer,
    config: RewardConfig,
    strategy: RewardingStrategy,
    shard: Shard = Shard(),
) -> list[dict]:
    """Score every generation record not yet in `out_file`, in fixed chunks of
    `config.batch_prompts` (`icr.runtime.jobs.run_job`: resumable, sharded, in generation order)."""
    records = [GenerationRecord.from_json(g) for g in generations]

    def process(chunk: list[GenerationRecord]) -> list[dict]:
        scored = reward_records(chunk, [english[g.id] for g in chunk], policy, reference, config, strategy)
        return [record.to_json() for record in scored]

    lang = records[0].lang if records else ""
    return run_job(
        out_file,
        records,
        lambda g: g.id,
        config.batch_prompts,
        process,
        shard,
        f"reward {lang} ({config.mode})",
        "prompt",
    )


def run_reward(ctx: StageContext) -> dict:
    run, t, config = ctx.run, ctx.t, ctx.config
    policy, reference = run.policy_spec(t), run.reward_reference_spec(t)
    # models split over a node's GPUs (models.device_map): one process per node scores, the others wait
    shard = run.shard if config.models.device_map is None else node_shard(run.shard)
    strategy, scorers = None, (None, None)
    if shard.takes_work:
        translator = None
        if STRATEGIES[config.reward.mode].needs_translator:
            translator = ctx.pool.get(run.translator_spec(t))
        strategy = make_strategy(config.reward, translator)
        # one scorer per model for the whole stage: its token budget and out-of-memory back-off hold
        # across languages and chunks
        budget = config.reward.token_budget
        scorers = Scorer.of(ctx.pool.get(policy), budget), Scorer.of(ctx.pool.get(reference), budget)
    counts = {}
    for lang in ctx.prompts.languages:
        generations = read_jsonl(run.generations_dir(t) / f"{lang}.jsonl")
        done = reward_language(
            generations,
            ctx.prompts.english,
            run.rewards_dir(t) / f"{lang}.jsonl",
            policy=scorers[0],
            reference=scorers[1],
            config=config.reward,
            strategy=strategy,
            shard=shard,
        )
        counts[lang] = len(done)
    return {"policy": policy, "reference": reference, "mode": config.reward.mode, "records": counts}


STAGE = Stage(
    name="reward",
    summary="Stage 2: score every response with the implicit reward β·log π^t/π_ref.",
    sections=("seed", "models", "data", "generate", "reward"),
    inputs=language_files(lambda run, t: run.generations_dir(t)),
    outputs=language_files(lambda run, t: run.rewards_dir(t)),
    run=run_reward,
    unit="prompt",
    expected=lambda ctx: len(ctx.prompts),
    counts_records=True,
)
