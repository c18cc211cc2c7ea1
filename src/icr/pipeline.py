"""`icr run`: T iterations of the stages in `icr.stages.STAGES`, resuming where a run stopped.

A stage runs only if the manifest does not record it as finished (under the same config
sections); it is recorded once its outputs are complete (`icr.runtime.rundir`). `icr run` and every stage
command hold the run directory's lock (`icr.runtime.runlock`: one writer per run), and a stage stopped by
a signal is recorded in the manifest's `failures` (`icr.core.faults`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from icr.config import RunConfig
from icr.core.errors import ConfigError
from icr.core.faults import Preempted, acknowledge_stop
from icr.core.io import read_json, write_text_atomic
from icr.core.logs import run_log_file
from icr.runtime.preflight import check_run
from icr.runtime.rundir import ModelPool, RunDir
from icr.runtime.runlock import run_lock
from icr.stages import STAGES, Stage, StageContext

log = logging.getLogger(__name__)
SUMMARY_FIELDS = (
    "prompts",
    "pairs",
    "mean_len_chosen",
    "mean_len_rejected",
    "mean_margin",
    "alpha",
    "target_language_share",
)


def run_once(stage: Stage, ctx: StageContext) -> None:
    """Run `stage` of iteration ctx.t unless the manifest records it as finished."""
    if ctx.run.is_done(ctx.t, stage):
        return
    log.info("iteration %d: %s", ctx.t, stage.name)
    try:
        ctx.run.mark_done(ctx.t, stage, **stage.execute(ctx))
    except Preempted as err:
        acknowledge_stop()  # recording the stop must not be stopped
        ctx.run.record_failure(ctx.t, stage, err)
        raise


@contextmanager
def open_run(config: RunConfig) -> Iterator[RunDir]:
    """The run directory of `config`, locked for this process (`icr.runtime.runlock`) during the block.
    The lock comes first: opening a RunDir clears what an earlier writer left. The main process
    appends the block's log records, library warnings included, to `<run_dir>/icr.log`."""
    with run_lock(config.run_dir):
        run = RunDir(config)
        if not run.shard.is_main:
            yield run
            return
        with run_log_file(run.log_file):
            yield run


def run_stage(config: RunConfig, name: str, iteration: int = 0) -> RunDir:
    """Run one stage of one iteration (the earlier stages of that iteration must be finished)."""
    prompts_by_data = check_run(config)  # before a run folder is made or a model loads
    with open_run(config) as run:
        for earlier in list(STAGES)[: list(STAGES).index(name)]:
            if not run.is_done(iteration, STAGES[earlier]):
                raise ConfigError(f"stage iter_{iteration}/{name} needs iter_{iteration}/{earlier} first")
        if iteration > 0 and not run.is_done(iteration - 1, STAGES["train"]):
            raise ConfigError(f"iteration {iteration} needs the model trained in iteration {iteration - 1}")
        prompts = prompts_by_data[config.at_iteration(iteration).data.model_dump_json()]
        run_once(STAGES[name], StageContext(run, iteration, ModelPool(config), prompts))
    return run


def run_iterations(config: RunConfig) -> RunDir:
    """The whole loop: T iterations of generate → reward → pairs → train, resuming where it stopped."""
    # by the data section: iterations with the same prompts share them; read before a run folder is
    # made or a model loads
    prompts_by_data = check_run(config)
    with open_run(config) as run:
        pool = ModelPool(config)
        for t in range(config.iterations):
            prompts = prompts_by_data[config.at_iteration(t).data.model_dump_json()]
            for stage in STAGES.values():
                run_once(stage, StageContext(run, t, pool, prompts))
            pool.clear()
        write_summary(run)
    return run


def summary_rows(run: RunDir) -> list[dict]:
    """Per iteration and language: pairs kept, lengths, margin, α, target-language share."""
    rows = []
    for t in range(run.config.iterations):
        path = run.pairs_stats_file(t)
        if not path.exists():
            continue
        for lang, s in read_json(path).items():
            effect = s.get("language_filter_effect", {})
            rows.append(
                {
                    "iteration": t,
                    "lang": lang,
                    **{k: s[k] for k in SUMMARY_FIELDS},
                    **{k: s.get(k) for k in ("off_language_chosen", "off_language_rejected")},
                    "pairs_differing_off_vs_all": effect.get("differing_pairs_off_vs_all"),
                }
            )
    return rows


def write_summary(run: RunDir) -> str:
    run.shard.wait()
    head = (
        "| iter | lang | prompts | pairs | len chosen | len rejected | margin | α | in target lang | "
        "off-language chosen / rejected | pairs differing, filter off vs all |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in summary_rows(run):
        lines.append(
            f"| {r['iteration']} | {r['lang']} | {r['prompts']} | {r['pairs']} | "
            f"{r['mean_len_chosen']:.1f} | {r['mean_len_rejected']:.1f} | {r['mean_margin']:.3f} | "
            f"{r['alpha']:.4f} | {100 * r['target_language_share']:.1f}% | "
            f"{r['off_language_chosen']} / {r['off_language_rejected']} | {r['pairs_differing_off_vs_all']} |"
        )
    text = "\n".join(lines) + "\n"
    if run.shard.is_main:
        write_text_atomic(run.root / "summary.md", text)
    return text
