"""The run directory: its manifest and the models of a run (its paths: `icr.runtime.layout`).

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
from typing import Protocol

import yaml
from pydantic import BaseModel

from icr.config import RunConfig, dump_config, load_config
from icr.config.base import hashed_fields
from icr.config.run import RUN_HASHED
from icr.core.distributed import current_shard
from icr.core.errors import ConfigError, DataError, ModelLoadError
from icr.core.faults import SETTINGS_FAULTS, RunFault, write_section
from icr.core.hub import hub_commit, is_hub_spec
from icr.core.io import read_json, write_json_atomic, write_text_atomic
from icr.core.models import LoadedModel
from icr.runtime.layout import RunLayout

log = logging.getLogger(__name__)

LIBRARIES = ("icr", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic", "py3langid")


class StageName(Protocol):
    name: str
    sections: tuple[str, ...]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_models(root: str | Path) -> list[tuple[str, str]]:
    """(name, model spec) of a run folder's models: 'pi0' = models.policy of its config.yaml, then
    'pi{t+1}' = iter_t/model for each trained iteration."""
    layout = RunLayout(root)
    config_file = layout.config_file
    if not config_file.exists():
        raise DataError(f"{root}: not a run folder (no config.yaml)")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    policy = (config.get("models") or {}).get("policy")
    if not policy:
        raise DataError(f"{config_file}: no models.policy")
    return [("pi0", str(policy))] + [
        (f"pi{t + 1}", str(layout.model_dir(t)))
        for t in layout.iterations()
        if (layout.model_dir(t) / "config.json").exists()
    ]


def hashed_fields_by_name(config: RunConfig, sections: tuple[str, ...]) -> dict[str, object]:
    """{dotted field: value} of the hashed fields of `sections` (what a stage's config hash covers)."""
    out: dict[str, object] = {}

    def flatten(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}", v)
        else:
            out[prefix] = value

    for section in sections:
        value = getattr(config, section)
        flatten(section, hashed_fields(value) if isinstance(value, BaseModel) else value)
    return out


class RunDir(RunLayout):
    """A run folder and its manifest, at the paths of `RunLayout`."""

    def __init__(self, config: RunConfig):
        super().__init__(config.run_dir)
        self.config = config
        self.shard = current_shard()  # under `accelerate launch`, only the main process writes the manifest
        self.root.mkdir(parents=True, exist_ok=True)
        if self.shard.is_main:  # temporary files of atomic writes that a killed run left unfinished
            for stale in self.root.rglob(".*.tmp"):
                stale.unlink(missing_ok=True)
        self.manifest = (
            read_json(self.manifest_file)
            if self.manifest_file.exists()
            else {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}}
        )
        self.pin_hub_models()

    def pin_hub_models(self) -> None:
        """Record the commit each Hub model spec resolves to (saved with the next finished stage). A
        spec whose commit moved since the finished stages ran refuses the resume: their outputs came
        from other weights. A spec that cannot be resolved now stays unpinned: loading it reports why."""
        m = self.config.models
        specs = [s for s in dict.fromkeys((m.policy, m.reference, m.translator)) if s and is_hub_spec(s)]
        current = {}
        for spec in specs:
            try:
                current[spec] = hub_commit(spec)
            except ModelLoadError:
                continue
        recorded = self.manifest.get("hub_commits", {})
        moved = [f"{s}: {recorded[s]} → {c}" for s, c in current.items() if recorded.get(s, c) != c]
        if moved and self.manifest["stages"]:
            raise ConfigError(
                f"{self.root}: a Hub model changed since the run's finished stages ({', '.join(moved)}); pin the "
                "old commit as owner/name@<commit> to resume, or use a new run name"
            )
        if current:
            self.manifest["hub_commits"] = {**recorded, **current}

    def _save(self) -> None:
        """Record the config and versions that produced the finished stages (only when one finishes,
        so a refused config never overwrites the description of a run)."""
        if not self.shard.is_main:
            return
        self.manifest["versions"] = library_versions()
        self.manifest["config_hash"] = self.config.section_hash(*RUN_HASHED)
        with write_section():  # a stop signal waits for both files
            write_text_atomic(self.config_file, dump_config(self.config))
            write_json_atomic(self.manifest_file, self.manifest)

    def record_failure(self, t: int, stage: StageName, err: BaseException) -> None:
        """Keep a stage's failure (a diverged or out-of-memory training, a preemption) in the
        manifest's `failures` list; a failed training lets earlier iterations keep other train settings
        (`is_done`)."""
        if not self.shard.is_main:
            return
        self.manifest.setdefault("failures", []).append(
            {
                "stage": stage.name,
                "iteration": t,
                "kind": type(err).__name__,
                "message": str(err),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "config_hash": self.config.at_iteration(t).section_hash(*stage.sections),
            }
        )
        try:
            write_json_atomic(self.manifest_file, self.manifest)
        except RunFault as write_err:  # e.g. the disk is full too: the stop itself matters more
            log.error("%s", write_err)

    def settings_failure_after(self, t: int, stage: StageName) -> dict | None:
        """The recorded failure of `stage` in a later iteration than t that asked the user to change
        its settings (`icr.core.faults.SETTINGS_FAULTS`: a diverged or out-of-memory training), if any.
        (The other sections stage t depends on are checked by its own iteration's earlier stages.)"""
        kinds = {fault.__name__ for fault in SETTINGS_FAULTS}
        return next(
            (
                f
                for f in self.manifest.get("failures", [])
                if f["stage"] == stage.name and f["iteration"] > t and f["kind"] in kinds
            ),
            None,
        )

    def policy_spec(self, t: int) -> str:
        """π^t: the configured DPO model at t = 0, then the model trained in iteration t − 1."""
        return self.config.models.policy if t == 0 else str(self.model_dir(t - 1))

    def reward_reference_spec(self, t: int) -> str:
        """The reference of iteration t's reward: π_ref ('original') or π^{t−1} ('previous')."""
        if self.config.reward.reference == "original" or t == 0:
            return self.config.models.reference
        return self.policy_spec(t - 1)

    def translator_spec(self, t: int) -> str:
        """Who translates responses in `reward.mode: translate`: `models.translator`, else π^t, as the
        released scripts do (scripts/batch_translate.sh runs the policy checkpoint)."""
        return self.config.models.translator or self.policy_spec(t)

    def is_done(self, t: int, stage: StageName) -> bool:
        entry = self.manifest["stages"].get(self.stage_key(t, stage.name))
        if not entry or entry.get("status") != "done":
            return False
        if entry["config_hash"] != self.config.at_iteration(t).section_hash(*stage.sections):
            failure = self.settings_failure_after(t, stage)
            if failure is None:
                raise ConfigError(
                    f"{self.root}: stage iter_{t}/{stage.name} finished under a different config "
                    f"({self.changes_since_recorded(t, stage.sections)}); use a new run name, or delete "
                    f"iter_{t} onwards to redo it"
                )
            # the user changed the settings as the failure's message asked
            log.warning(
                "iter_%d/%s finished under other settings; kept, because iter_%d/%s failed (%s) and the "
                "new settings apply from there on",
                t,
                stage.name,
                failure["iteration"],
                stage.name,
                failure["kind"],
            )
        return True

    def changes_since_recorded(self, t: int, sections: tuple[str, ...]) -> str:
        """'generate.temperature: 0.9 → 0.5, ...': the fields of `sections` (iteration t's values)
        that differ from the run's config.yaml, which describes the finished stages."""
        if not self.config_file.exists():
            return f"sections {', '.join(sections)}"
        recorded = hashed_fields_by_name(load_config(self.config_file).at_iteration(t), sections)
        current = hashed_fields_by_name(self.config.at_iteration(t), sections)
        changed = [
            f"{k}: {recorded.get(k)!r} → {current.get(k)!r}" for k in current if recorded.get(k) != current.get(k)
        ]
        return ", ".join(changed) or f"sections {', '.join(sections)}"

    def mark_done(self, t: int, stage: StageName, **info) -> None:
        self.manifest["stages"][self.stage_key(t, stage.name)] = {
            "status": "done",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config_hash": self.config.at_iteration(t).section_hash(*stage.sections),
            **info,
        }
        self._save()


class ModelPool:
    """Models loaded once and shared by the stages of an iteration."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.models: dict[str, LoadedModel] = {}

    def get(self, spec: str) -> LoadedModel:
        if spec not in self.models:
            m = self.config.models
            self.models[spec] = m.load(spec)
        return self.models[spec]

    def clear(self) -> None:
        self.models.clear()
        gc.collect()
