"""Stage 4, train: DPO + λ·NLL on the pairs, from π^t to π^{t+1} (`icr.training.trainer` trains). Trackers
(`train.report_to`) log under `<run>/tracking/iter_<t>` as `<run_name>/iter_<t>`, with the
iteration's pair statistics; `icr status` sees the optimizer steps. The saved model folder gets
its model card, README.md (`icr.runtime.cards.model_card`)."""

from __future__ import annotations

from icr.core.faults import OutOfMemory, TrainingDiverged
from icr.core.io import read_json, read_jsonl, write_text_atomic
from icr.runtime.cards import count_by_language, model_card
from icr.runtime.status import train_status_callback
from icr.stages.base import Stage, StageContext
from icr.training.registry import TrainingJob, trainer_for
from icr.training.replay import write_training_pairs
from icr.training.tracking import tracked_run_name


def run_train(ctx: StageContext) -> dict:
    run, t, config = ctx.run, ctx.t, ctx.config
    pairs_file, replay = training_pairs(ctx)
    ctx.pool.clear()  # training loads its own copy; do not hold a second one
    spec = run.policy_spec(t)
    models = config.models
    stats_file = run.pairs_stats_file(t)  # for the trackers only: not an input the stage needs
    pair_stats = read_json(stats_file) if stats_file.exists() else None
    try:
        job = TrainingJob(
            spec,
            pairs_file,
            run.model_dir(t),
            config.train,
            config.reward.token_budget,
            models.device,
            models.trust_remote_code,
            models.allow_pickle,
            run_name=tracked_run_name(config.train.run_name, config.name, t),
            tracking_dir=run.tracking_dir(t),
            pair_stats=pair_stats,
            callbacks=(train_status_callback(run.root, t),),
        )
        metrics = trainer_for(config.train.loss)(job)
    except (TrainingDiverged, OutOfMemory) as err:  # nothing promoted; the user changes train.* and resumes
        run.record_failure(t, STAGE, err)
        raise
    if run.shard.is_main:
        pairs = count_by_language(read_jsonl(run.pairs_file(t)), list(config.data.languages))
        write_text_atomic(run.model_dir(t) / "README.md", str(model_card(config, t, spec, pairs)))
    info = {"init": spec, "output": str(run.model_dir(t)), "steps": metrics["steps"], "after": metrics["after"]}
    return {**info, "replay": replay} if replay else info


def replays(run, t: int) -> bool:
    return t > 0 and run.config.at_iteration(t).train.replay is not None


def training_pairs(ctx: StageContext):
    """The pairs file to train on, and the replay counts (None without replay)."""
    run, t = ctx.run, ctx.t
    if not replays(run, t):
        return run.pairs_file(t), None
    out = run.training_pairs_file(t)
    counts = None
    if run.shard.is_main:
        seed = ctx.config.train.seed
        counts = write_training_pairs(run.pairs_file(t), run.pairs_file(t - 1), out, ctx.config.train.replay, seed, t)
    run.shard.wait()
    return out, counts


STAGE = Stage(
    name="train",
    summary="Stage 4: DPO + λ·NLL on the pairs, from π^t to π^{t+1}.",
    sections=("seed", "models", "data", "generate", "reward", "pairs", "train"),
    inputs=lambda run, t: [run.pairs_file(t)] + ([run.pairs_file(t - 1)] if replays(run, t) else []),
    outputs=lambda run, t: [run.model_dir(t)] + ([run.training_pairs_file(t)] if replays(run, t) else []),
    run=run_train,
    unit="step",
)
