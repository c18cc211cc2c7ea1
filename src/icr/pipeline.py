"""The run directory and the ICR loop: generate → reward → pairs → train, for T iterations.

    runs/NAME/
      config.yaml, manifest.json         resolved config; finished stages, versions, config hashes
      iter_0/generations/{lang}.jsonl     N responses per prompt from π^0
      iter_0/rewards/{lang}.jsonl         logp_policy, logp_ref, n_tokens, reward per response
      iter_0/pairs.jsonl, pairs_stats.json
      iter_0/model/                       π^1 (+ train_metrics.json)
      iter_1/...

A stage is recorded as finished in the manifest only after its outputs are complete, together with
a hash of the config sections it depends on. Re-running a finished stage does nothing; an
interrupted stage resumes from its partial output; a finished stage whose config changed is an
error (start a new run name instead of mixing results).
"""

from __future__ import annotations

import gc
import logging
import platform
import time
from importlib import metadata
from pathlib import Path

from icr.config import ConfigError, RunConfig, dump_config
from icr.data import (PromptSet, load_prompt_set, read_json, read_jsonl, write_json_atomic, write_jsonl_atomic,
                      write_text_atomic)
from icr.distributed import current_shard
from icr.models import LoadedModel, load_model

log = logging.getLogger(__name__)

STAGES = ("generate", "reward", "pairs", "train")
STAGE_SECTIONS = {
    "generate": ("seed", "models", "data", "generate"),
    "reward": ("seed", "models", "data", "generate", "reward"),
    "pairs": ("seed", "models", "data", "generate", "reward", "pairs"),
    "train": ("seed", "models", "data", "generate", "reward", "pairs", "train"),
}
LIBRARIES = ("icr", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic", "py3langid")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunDir:
    """A run folder and its manifest."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.shard = current_shard()  # under `accelerate launch`, only the main process writes the manifest
        self.root = config.run_dir
        self.manifest_path = self.root / "manifest.json"
        self.root.mkdir(parents=True, exist_ok=True)
        if self.shard.is_main:  # temporary files of atomic writes that a killed run left unfinished
            for stale in self.root.rglob(".*.tmp"):
                stale.unlink(missing_ok=True)
        self.manifest = read_json(self.manifest_path) if self.manifest_path.exists() else {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}}

    def _save(self) -> None:
        """Record the config and versions that produced the finished stages (only when one finishes,
        so a refused config never overwrites the description of a run)."""
        if not self.shard.is_main:
            return
        self.manifest["versions"] = library_versions()
        self.manifest["config_hash"] = self.config.section_hash(*STAGE_SECTIONS["train"])
        write_text_atomic(self.root / "config.yaml", dump_config(self.config))
        write_json_atomic(self.manifest_path, self.manifest)

    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def generations_dir(self, t: int) -> Path:
        return self.iter_dir(t) / "generations"

    def rewards_dir(self, t: int) -> Path:
        return self.iter_dir(t) / "rewards"

    def pairs_file(self, t: int) -> Path:
        return self.iter_dir(t) / "pairs.jsonl"

    def model_dir(self, t: int) -> Path:
        """Where π^{t+1}, trained in iteration t, is saved."""
        return self.iter_dir(t) / "model"

    def is_done(self, t: int, stage: str) -> bool:
        entry = self.manifest["stages"].get(f"iter_{t}/{stage}")
        if not entry or entry.get("status") != "done":
            return False
        want = self.config.section_hash(*STAGE_SECTIONS[stage])
        if entry["config_hash"] != want:
            raise ConfigError(
                f"{self.root}: stage iter_{t}/{stage} finished under a different config (sections "
                f"{', '.join(STAGE_SECTIONS[stage])}); use a new run name, or delete iter_{t} onwards to redo it"
            )
        return True

    def mark_done(self, t: int, stage: str, **info) -> None:
        self.manifest["stages"][f"iter_{t}/{stage}"] = {
            "status": "done",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config_hash": self.config.section_hash(*STAGE_SECTIONS[stage]),
            **info,
        }
        self._save()

    def stage_info(self, t: int, stage: str) -> dict:
        return self.manifest["stages"].get(f"iter_{t}/{stage}", {})


def policy_spec(config: RunConfig, t: int) -> str:
    """π^t: the configured DPO model at t = 0, then the model trained in iteration t − 1."""
    return config.models.policy if t == 0 else str(config.run_dir / f"iter_{t - 1}" / "model")


def reward_reference_spec(config: RunConfig, t: int) -> str:
    """The reference of iteration t's reward: π_ref ('original') or π^{t−1} ('previous')."""
    if config.reward.reference == "original" or t == 0:
        return config.models.reference
    return policy_spec(config, t - 1)


class ModelPool:
    """Models loaded once and shared by the stages of an iteration."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.models: dict[str, LoadedModel] = {}

    def get(self, spec: str) -> LoadedModel:
        if spec not in self.models:
            m = self.config.models
            self.models[spec] = load_model(spec, m.device, m.dtype, m.trust_remote_code, m.allow_pickle)
        return self.models[spec]

    def clear(self) -> None:
        self.models.clear()
        gc.collect()


def load_prompts(config: RunConfig) -> PromptSet:
    d = config.data
    return load_prompt_set(d.prompts, d.languages, d.id_field, d.text_field, d.limit)


def run_generate(run: RunDir, t: int, pool: ModelPool, prompts: PromptSet) -> None:
    from icr.generate import generate_stage, make_generator

    if run.is_done(t, "generate"):
        return
    config = run.config
    _stage_started(run, t, "generate", len(prompts), "prompt")
    spec = policy_spec(config, t)
    if config.generate.backend == "vllm":
        from icr.models import resolve_model_path

        generator = make_generator(resolve_model_path(spec), config.generate, dtype=config.models.dtype,
                                   trust_remote_code=config.models.trust_remote_code,
                                   allow_pickle=config.models.allow_pickle)
    else:
        generator = make_generator(pool.get(spec), config.generate)
    out = generate_stage(generator, prompts, run.generations_dir(t), config.generate, config.seed, t,
                         config.data.max_prompt_tokens, run.shard)
    run.mark_done(t, "generate", policy=spec, records={lang: len(v) for lang, v in out.items()})


def run_reward(run: RunDir, t: int, pool: ModelPool, prompts: PromptSet) -> None:
    from icr.reward import reward_language

    if run.is_done(t, "reward"):
        return
    config = run.config
    _stage_started(run, t, "reward", len(prompts), "prompt")
    policy, reference = policy_spec(config, t), reward_reference_spec(config, t)
    translator = None
    if config.reward.mode == "translate":
        translator = pool.get(config.models.translator or config.models.reference)
    counts = {}
    for lang in prompts.languages:
        generations = read_jsonl(run.generations_dir(t) / f"{lang}.jsonl")
        done = reward_language(generations, prompts.english, run.rewards_dir(t) / f"{lang}.jsonl",
                               pool.get(policy), pool.get(reference), config.reward, translator, run.shard)
        counts[lang] = len(done)
    run.mark_done(t, "reward", policy=policy, reference=reference, mode=config.reward.mode, records=counts)


def run_pairs(run: RunDir, t: int, prompts: PromptSet) -> dict:
    from icr.pairs import select_pairs

    if run.is_done(t, "pairs"):
        return read_json(run.iter_dir(t) / "pairs_stats.json")
    if not run.shard.is_main:  # cheap: the main process selects, the others wait for its files
        run.shard.wait()
        run.mark_done(t, "pairs")
        return read_json(run.iter_dir(t) / "pairs_stats.json")
    _stage_started(run, t, "pairs", None, "")
    all_pairs, stats = [], {}
    for lang in prompts.languages:
        pairs, stats[lang] = select_pairs(read_jsonl(run.rewards_dir(t) / f"{lang}.jsonl"), run.config.pairs)
        all_pairs += pairs
    write_jsonl_atomic(run.pairs_file(t), all_pairs)
    write_json_atomic(run.iter_dir(t) / "pairs_stats.json", stats)
    run.mark_done(t, "pairs", pairs=len(all_pairs))
    run.shard.wait()
    return stats


def run_train(run: RunDir, t: int, pool: ModelPool) -> None:
    from icr.train import train_dpo

    if run.is_done(t, "train"):
        return
    from icr.status import train_status_callback
    from icr.tracking import tracked_run_name

    pool.clear()  # training loads its own copy; do not hold a second one
    config = run.config
    _stage_started(run, t, "train", None, "step")
    spec = policy_spec(config, t)
    metrics = train_dpo(spec, run.pairs_file(t), run.model_dir(t), config.train, config.models.device,
                        config.models.trust_remote_code, config.models.allow_pickle,
                        run_name=tracked_run_name(config.train.run_name, config.name, t),
                        tracking_dir=run.root / "tracking" / f"iter_{t}",
                        pair_stats=read_json(run.iter_dir(t) / "pairs_stats.json"),
                        callbacks=(train_status_callback(run.root, t),))
    run.mark_done(t, "train", init=spec, output=str(run.model_dir(t)), steps=metrics["steps"],
                  after=metrics["after"])


def _stage_started(run: RunDir, t: int, stage: str, expected: int | None, unit: str) -> None:
    """For `icr status`: the stage starts, expecting `expected` records (`icr.status`)."""
    from icr.status import stage_started

    if run.shard.is_main:
        stage_started(run.root, t, stage, run.config.iterations, expected, unit)


STAGE_RUNNERS = {
    "generate": lambda run, t, pool, prompts: run_generate(run, t, pool, prompts),
    "reward": lambda run, t, pool, prompts: run_reward(run, t, pool, prompts),
    "pairs": lambda run, t, pool, prompts: run_pairs(run, t, prompts),
    "train": lambda run, t, pool, prompts: run_train(run, t, pool),
}


def run_stage(config: RunConfig, stage: str, iteration: int = 0) -> RunDir:
    """Run one stage of one iteration (the earlier stages of that iteration must be finished)."""
    run = RunDir(config)
    for earlier in STAGES[: STAGES.index(stage)]:
        if not run.is_done(iteration, earlier):
            raise ConfigError(f"stage iter_{iteration}/{stage} needs iter_{iteration}/{earlier} first")
    if iteration > 0 and not run.is_done(iteration - 1, "train"):
        raise ConfigError(f"iteration {iteration} needs the model trained in iteration {iteration - 1}")
    STAGE_RUNNERS[stage](run, iteration, ModelPool(config), load_prompts(config))
    return run


def run_iterations(config: RunConfig) -> RunDir:
    """The whole loop: T iterations of generate → reward → pairs → train, resuming where it stopped."""
    run = RunDir(config)
    prompts = load_prompts(config)
    pool = ModelPool(config)
    for t in range(config.iterations):
        for stage in STAGES:
            log.info("iteration %d: %s", t, stage)
            STAGE_RUNNERS[stage](run, t, pool, prompts)
        pool.clear()
    write_summary(run)
    return run


def summary_rows(run: RunDir) -> list[dict]:
    """Per iteration and language: pairs kept, lengths, margin, α, target-language share."""
    rows = []
    for t in range(run.config.iterations):
        path = run.iter_dir(t) / "pairs_stats.json"
        if not path.exists():
            continue
        for lang, s in read_json(path).items():
            rows.append({"iteration": t, "lang": lang, **{k: s[k] for k in (
                "prompts", "pairs", "mean_len_chosen", "mean_len_rejected", "mean_margin", "alpha",
                "target_language_share")}})
    return rows


def write_summary(run: RunDir) -> str:
    run.shard.wait()
    rows = summary_rows(run)
    head = "| iter | lang | prompts | pairs | len chosen | len rejected | margin | α | in target lang |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['iteration']} | {r['lang']} | {r['prompts']} | {r['pairs']} | "
                     f"{r['mean_len_chosen']:.1f} | {r['mean_len_rejected']:.1f} | {r['mean_margin']:.3f} | "
                     f"{r['alpha']:.4f} | {100 * r['target_language_share']:.1f}% |")
    text = "\n".join(lines) + "\n"
    if run.shard.is_main:
        write_text_atomic(run.root / "summary.md", text)
    return text
