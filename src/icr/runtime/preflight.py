"""Checks of a run's config against this machine, before a run folder is made or a model loads.

    models.*      an embedded name, an existing .gguf file or model folder, or a well-formed Hub id
                  (`owner/name[@revision]`) whose revision is in the local cache when `HF_HUB_OFFLINE` is set
    data.prompts  an existing folder or file, embedded prompts, or a Hub dataset id; the prompts of
                  every language (and their text fields) are read here, once per data section

Each failure is one sentence naming the field, the value and the fix, raised as a `ConfigError`
(exit code 2). Policy and reference being the same model is a warning: every implicit reward of
iteration 0 is then 0, and no pair passes a margin.
"""

from __future__ import annotations

import logging
from pathlib import Path

from icr.config import RunConfig
from icr.core.errors import ConfigError, DataError, IcrError
from icr.core.hub import cached_snapshot, offline, split_revision
from icr.core.models import resolve_embedded
from icr.core.prompts import PromptSet, PromptSource, load_prompt_set

log = logging.getLogger(__name__)


def looks_like_path(spec: str) -> bool:
    """A spec that can only be a path: absolute, relative to ./ ../ ~, a file suffix, or more than
    the one slash of a Hub id."""
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or Path(spec).suffix in (".gguf", ".json")


def hub_id_problem(field: str, spec: str, repo_type: str) -> str | None:
    """Why `spec` (`owner/name[@revision]`) cannot be a Hub id of `repo_type` here: malformed, or
    offline and that revision is not in the local cache."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, revision = split_revision(spec)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return f"{field}={spec!r} is neither an existing path nor a valid Hub id (owner/name[@revision])"
    if not offline() or cached_snapshot(repo_id, revision, repo_type) is not None:
        return None
    return (
        f"{field}={spec!r}: HF_HUB_OFFLINE is set and revision {revision or 'main'} of this Hub {repo_type} is "
        "not in the local cache; download it on a machine online (hf download) or give a local path"
    )


def model_problem(field: str, spec: str) -> str | None:
    """Why the model spec of `field` cannot load, or None."""
    if spec.startswith("embedded:"):
        try:
            resolve_embedded(spec)
        except IcrError as err:
            return f"{field}={spec!r}: {err}"
        return None
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            return f"{field}={spec!r} is a folder without config.json: give a model folder, a .gguf file or a Hub id"
        return None
    if looks_like_path(spec):
        return f"{field}={spec!r} does not exist: give an existing model folder, a .gguf file or a Hub id"
    return hub_id_problem(field, spec, "model")


def prompts_problem(spec: str) -> str | None:
    """Why `data.prompts` names nothing that could hold prompts, or None (reading them comes after)."""
    if spec.startswith("embedded:") or Path(spec).expanduser().exists():
        return None
    if looks_like_path(spec):
        return (
            f"data.prompts={spec!r} does not exist: give a folder of <lang>.jsonl or <lang>.json files, "
            "a table file, or a Hub dataset id"
        )
    return hub_id_problem("data.prompts", spec, "dataset")


def load_prompts(config: RunConfig) -> PromptSet:
    d = config.data
    source = PromptSource(d.prompts, d.id_field, d.text_field, d.split, d.config, d.language_field)
    return load_prompt_set(source, d.languages, limit=d.limit, rows=d.rows)


def iteration_configs(config: RunConfig) -> list[RunConfig]:
    """The config of each iteration (its `iteration_overrides` applied)."""
    return [config.at_iteration(t) for t in range(config.iterations)]


def check_sources(config: RunConfig) -> None:
    """Every model and prompt source of `config` (all iterations) exists or is a usable Hub id
    (`icr config`: nothing is read)."""
    m = config.models
    specs = {"models.policy": m.policy, "models.reference": m.reference, "models.translator": m.translator}
    problems = [p for field, spec in specs.items() if spec and (p := model_problem(field, spec))]
    sources = dict.fromkeys(c.data.prompts for c in iteration_configs(config))
    problems += [p for spec in sources if (p := prompts_problem(spec))]
    if problems:
        raise ConfigError("; ".join(problems))
    if m.policy == m.reference:
        log.warning(
            "models.policy and models.reference are the same model (%s): every implicit reward of "
            "iteration 0 is 0 and no pair passes the margin; set models.reference to the DPO model's "
            "reference (SFT) model",
            m.policy,
        )


def check_run(config: RunConfig) -> dict[str, PromptSet]:
    """`check_sources`, then the prompts of every language, keyed by each distinct data section
    (`DataConfig.model_dump_json`) and read once: what `icr run` and the stage commands use."""
    check_sources(config)
    prompts: dict[str, PromptSet] = {}
    for c in iteration_configs(config):
        key = c.data.model_dump_json()
        if key not in prompts:
            try:
                prompts[key] = load_prompts(c)
            except DataError as err:
                raise ConfigError(f"data.prompts={c.data.prompts!r}: {err}") from None
    return prompts
