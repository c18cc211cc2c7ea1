"""Per-iteration settings: `iteration_overrides` entries of the run config, each changing some
fields for one iteration t (0-based, as the run folder's `iter_<t>`).

An entry may set the prompt block (`data.rows`, `data.limit`), any `pairs.*` field and any
`train.*` field (including `train.replay`). `iteration_config(config, t)` is the config iteration t
runs under: the run config with the entries of t applied. Every stage of iteration t reads it and
its manifest hash is taken from it, so a changed entry invalidates only the stages of its own
iteration whose sections it touches.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from icr.config.base import StrictModel, set_dotted

# Fields an entry may set: exact names, or a section prefix ending in '.'.
OVERRIDABLE = ("data.rows", "data.limit", "pairs.", "train.")

Config = TypeVar("Config", bound=BaseModel)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'pairs': {'max_chosen_score': 500}} and {'pairs.max_chosen_score': 500} alike as dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def overridable(dotted: str) -> bool:
    return any(dotted == name or (name.endswith(".") and dotted.startswith(name)) for name in OVERRIDABLE)


class IterationOverride(StrictModel):
    iteration: int = Field(
        ge=0,
        description="Iteration t whose settings change (0-based, the run folder's iter_<t>: iteration 1 is the "
        "second iteration, trained from π^1).",
    )
    set: dict[str, Any] = Field(
        description="Fields and their values for this iteration, as dotted keys or nested sections: "
        "data.rows, data.limit, any pairs.* or train.* field, e.g. {data.rows: [3000, 6000], "
        "pairs.max_chosen_score: 500, train.replay: 0.5}.",
    )

    @field_validator("set")
    @classmethod
    def _allowed_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        flat = flatten(value)
        refused = [k for k in flat if not overridable(k)]
        if refused:
            raise ValueError(
                f"{', '.join(refused)}: cannot be set per iteration (allowed: data.rows, data.limit, pairs.*, train.*)"
            )
        if not flat:
            raise ValueError("sets nothing")
        return flat


def iteration_sets(overrides: list[IterationOverride], t: int) -> dict[str, Any]:
    """The dotted fields the entries of iteration t set, in order (a later entry wins)."""
    merged: dict[str, Any] = {}
    for entry in overrides:
        if entry.iteration == t:
            merged.update(entry.set)
    return merged


def iteration_config(config: Config, t: int) -> Config:
    """The config iteration t runs under: `config` itself where no entry names t, else `config`
    with the entries of t applied and validated (its own `iteration_overrides` emptied)."""
    sets = iteration_sets(config.iteration_overrides, t)
    if not sets:
        return config
    tree = config.model_dump(mode="json")
    tree["iteration_overrides"] = []
    for dotted, value in sets.items():
        set_dotted(tree, dotted, value)
    return type(config).model_validate(tree)


def check_overrides(config: Config) -> None:
    """Every entry names an iteration of the run and sets fields that exist with valid values;
    raises ValueError naming the entry and the field."""
    for i, entry in enumerate(config.iteration_overrides):
        if entry.iteration >= config.iterations:
            raise ValueError(
                f"iteration_overrides[{i}]: iteration {entry.iteration} does not exist "
                f"(the run has iterations 0..{config.iterations - 1})"
            )
    for t in sorted({entry.iteration for entry in config.iteration_overrides}):
        try:
            iteration_config(config, t)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise ValueError(f"iteration_overrides for iteration {t}: {problems}") from None
