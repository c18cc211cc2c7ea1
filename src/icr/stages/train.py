"""Stage 4, train: DPO + λ·NLL on the pairs, from π^t to π^{t+1} (`icr.training` trains)."""

from __future__ import annotations

from icr.stages.base import Stage, StageContext
from icr.training import train_dpo


def run_train(ctx: StageContext) -> dict:
    run, t, config = ctx.run, ctx.t, ctx.run.config
    ctx.pool.clear()  # training loads its own copy; do not hold a second one
    spec = run.policy_spec(t)
    models = config.models
    metrics = train_dpo(spec, run.pairs_file(t), run.model_dir(t), config.train, config.reward.token_budget,
                        models.device, models.trust_remote_code, models.allow_pickle)
    return {"init": spec, "output": str(run.model_dir(t)), "steps": metrics["steps"], "after": metrics["after"]}


STAGE = Stage(
    name="train",
    summary="Stage 4: DPO + λ·NLL on the pairs, from π^t to π^{t+1}.",
    sections=("seed", "models", "data", "generate", "reward", "pairs", "train"),
    inputs=lambda run, t: [run.pairs_file(t)],
    outputs=lambda run, t: [run.model_dir(t)],
    run=run_train,
)
