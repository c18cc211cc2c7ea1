"""What every config shares: strict sections, YAML reading, dotted overrides, validation.

A config is a tree of pydantic models. The same tree is read from YAML and from command-line
flags (`--generate.n 4` sets `generate.n`), and it is validated before any model is loaded:
unknown keys and impossible values are errors that name the field.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from icr.core.errors import ConfigError
from icr.core.languages import check_language

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"

Device = Annotated[str, Field(description="'auto', 'cpu', 'cuda', 'cuda:1', ...")]
Dtype = Annotated[
    Literal["auto", "float32", "bfloat16", "float16"],
    Field(description="Weights dtype: auto = bfloat16 on a GPU, float32 on a CPU."),
]
RewardMode = Literal["crosslingual", "multilingual", "translate"]  # keys of icr.engines.rewarding.STRATEGIES
SamplingBackend = Literal["hf", "hf-paged", "vllm"]  # keys of icr.engines.sampling.BACKENDS
JudgeBackend = Literal["alpaca_eval", "openai", "hf"]  # keys of icr.eval.judges.JUDGES
JudgeOrder = Literal["random", "both"]  # keys of icr.eval.judging.ORDERS
ScoreTokens = Literal["all", "skip_first"]  # keys of icr.engines.scoring.responses.SCORED_TOKENS
LanguageFilter = Literal["off", "chosen", "all"]  # keys of icr.engines.selection.LANGUAGE_FILTERS


def _known_languages(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("at least one language is required")
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate languages in {value}")
    return [check_language(code) for code in value]


Languages = Annotated[list[str], AfterValidator(_known_languages)]  # ISO 639-1 codes, known, each once

Config = TypeVar("Config", bound=BaseModel)


# Fields marked with this do not change what a stage computes (where logs go, names): they are left
# out of the config hash, so changing them never refuses to resume a run.
NOT_HASHED = {"hashed": False}
# hashed only when not at its default: a config that leaves it unset keeps the hash it has without it
HASHED_WHEN_SET = {"hashed": "when_set"}


def hashed_fields(section: BaseModel) -> dict[str, Any]:
    """`section.model_dump()` without the fields marked `NOT_HASHED`, nor those marked
    `HASHED_WHEN_SET` that have their default (recursively)."""
    data = section.model_dump()
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        hashed = (info.json_schema_extra or {}).get("hashed", True)
        if hashed is False or (hashed == "when_set" and value == info.get_default(call_default_factory=True)):
            data.pop(name)
        elif isinstance(value, BaseModel):
            data[name] = hashed_fields(value)
    return data


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config section class that holds the last key of `loc`, or None (inside a list, ...)."""
    for part in loc[:-1]:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None or not is_section(info.annotation):
            return None
        model = info.annotation
    return model


def _suggestion(model: type[BaseModel] | None, loc: tuple) -> str:
    """' (did you mean 'x'?)' for an unknown key close to a field of its section."""
    section = _section_at(model, loc) if model is not None else None
    if section is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def yaml_key_lines(path: str | Path | None) -> dict[tuple, int]:
    """1-based line of every mapping key of a YAML file, by its path of keys."""
    if path is None:
        return {}
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return {}
    lines: dict[tuple, int] = {}

    def walk(node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*prefix, key.value)
                lines[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for k, item in enumerate(node.value):
                walk(item, (*prefix, k))

    walk(root, ())
    return lines


def format_errors(err: ValidationError, model: type[BaseModel] | None = None, path: str | Path | None = None) -> str:
    """One line per problem: where (file:line when the key is in the YAML file), the field, the
    message, and for an unknown key the closest field of its section."""
    key_lines = yaml_key_lines(path)
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(p) for p in loc) or "<root>"
        where = f"{path}:{key_lines[loc]}: " if loc in key_lines else ""
        hint = _suggestion(model, loc) if e["type"] == "extra_forbidden" else ""
        message = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {where}{field}: {message}{hint}")
    return "invalid config:\n" + "\n".join(lines)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set tree['a']['b'] = value for dotted = 'a.b', creating sections as needed."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    node[keys[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML would
    silently keep the last one, dropping e.g. a whole earlier `train:` section)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_tree(path: str | Path | None) -> dict[str, Any]:
    """The mapping of a YAML config file ({} without a file)."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a valid YAML file: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def build_config(
    model: type[Config], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Read a YAML config (or the defaults), apply dotted overrides, validate."""
    tree = read_yaml_tree(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_errors(err, model, path)) from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def iter_fields(model: type[BaseModel], prefix: str = ""):
    """Yield (dotted name, field info, annotation) for every leaf field of the config tree."""
    for name, info in model.model_fields.items():
        if is_section(info.annotation):
            yield from iter_fields(info.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info, info.annotation
