"""Command-line options generated from a config model, and the config they build.

Every field of a command's config model is a flag: `--section.field` (the run's commands,
`align-english`, `reward-accuracy`), or, for `icr eval`, the short names its model declares
(`EvalConfig.cli_flags`: `--judge-model`, `--temperature`). Help text, default and choices come
from the field; values are read as YAML scalars (`true`, `null`, `1e-6`), lists also as `a,b,c`,
a list of sections as a YAML flow list, strings verbatim. Flags override the YAML file given with
`--config`. The model validates the result before anything runs.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import click
import yaml
from pydantic import BaseModel

from icr.config import build_config, iter_fields
from icr.config.base import is_section
from icr.core.errors import ConfigError


def option_name(dotted: str) -> str:
    """The Python parameter name of a field's option."""
    return dotted.replace(".", "__")


def flag_name(model: type[BaseModel], dotted: str) -> str:
    """`--generate.n` for the run's models; a model with `cli_flags` gets dashed short names."""
    flags = getattr(model, "cli_flags", None)
    section, _, field = dotted.rpartition(".")
    flat = section in getattr(model, "cli_flat_sections", ())  # --policy, not --models.policy
    if flags is None:
        return field if flat else dotted
    if dotted in flags:
        return flags[dotted]
    return (field if flat else dotted).replace(".", "-").replace("_", "-")


def _accepted_types(annotation) -> tuple:
    """The types a field accepts: (list[str],) for a list, (dict[str, Any],) for a mapping, (str,
    NoneType) for `str | None`, ..."""
    if get_origin(annotation) in (list, dict):
        return (annotation,)
    return get_args(annotation) or (annotation,)


def choices(annotation) -> tuple[str, ...]:
    """The values of a Literal field (or of a list of Literals), with 'null' for an optional one, else ()."""
    inner = get_args(annotation)[0] if get_origin(annotation) is list else annotation
    if get_origin(inner) is Literal:
        return tuple(get_args(inner))
    members = get_args(inner)
    literals = [m for m in members if get_origin(m) is Literal]
    if len(literals) == 1 and set(members) == {literals[0], type(None)}:  # `Literal[...] | None`
        return (*get_args(literals[0]), "null")
    return ()


def parse_value(raw: str, annotation) -> Any:
    """A flag's text as the field's value. Strings are taken verbatim (templates, ids, 'no' the
    Norwegian code); lists are 'a,b' or '[a, b]'; other values, mappings included, are YAML
    ('true', '1e-6', '{max_grad_norm: 0.5}')."""
    accepted = _accepted_types(annotation)
    is_list = any(get_origin(t) is list for t in accepted)
    if type(None) in accepted and raw.strip().lower() in ("null", "none", "~"):
        return None
    if any(is_section(next(iter(get_args(t)), None)) for t in accepted if get_origin(t) is list):
        return _yaml_value(raw)  # a list of sections (iteration_overrides): a YAML flow list
    if is_list:
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        elif str in accepted and "," not in text:
            return raw  # e.g. LoRA's 'all-linear' shorthand, which PEFT only expands as a string
        return [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
    if str in accepted:
        return raw
    return _yaml_value(raw)


def _yaml_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise click.UsageError(f"cannot read {raw!r}: {err}") from None


def effective_default(model: type[BaseModel], dotted: str) -> Any:
    """The value a field has when nothing sets it: its own default, or its section's (`icr eval`
    samples with the paper's evaluation decoding, not generation's)."""
    head, _, rest = dotted.partition(".")
    info = model.model_fields[head]
    if not rest:
        return info.default if info.default_factory is None else info.default_factory()
    if info.default_factory is not None:
        value = info.default_factory()
        for key in rest.split("."):
            value = getattr(value, key)
        return value
    return effective_default(info.annotation, rest)


# Fields holding a file or folder (shown as PATH); a model is a path or a Hub id (MODEL).
PATH_FIELDS = frozenset(
    {"output_dir", "prompts", "output", "run_dir", "pairs", "responses", "outputs", "reference_outputs", "to"}
    | {"data", "cache", "lc_data", "eval", "eval.prompts"}
)
MODEL_FIELDS = frozenset({"policy", "reference", "translator", "model", "models", "tokenizer"})
SCALAR_METAVARS = {int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}


def plain(value: Any) -> str:
    """A value as one writes it in a flag or in YAML: 0.9, true, en,es,de, cosine (no Python repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(plain(v) for v in value)
    return str(value)


def metavar(dotted: str, annotation) -> str:
    """The type a flag takes: [a|b|c] for a choice, INTEGER, FLOAT, BOOLEAN, PATH, MODEL, LIST,
    MAPPING (a YAML/JSON mapping, e.g. '{max_grad_norm: 0.5}'), TEXT."""
    allowed = choices(annotation)
    if allowed:
        return f"[{'|'.join(allowed)}]" + (",..." if get_origin(annotation) is list else "")
    name = dotted.rpartition(".")[2]
    accepted = [t for t in _accepted_types(annotation) if t is not type(None)]
    textual = str in accepted or list[str] in accepted
    if textual and name in MODEL_FIELDS:
        return "MODEL" + ("..." if get_origin(annotation) is list else "")
    if textual and (name in PATH_FIELDS or dotted in PATH_FIELDS):
        return "PATH"
    if any(get_origin(t) is list for t in accepted):
        return "LIST"
    if any(get_origin(t) is dict for t in accepted):
        return "MAPPING"
    kinds = {SCALAR_METAVARS.get(t) for t in accepted}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    numbers = [k for k in kinds if k in ("INTEGER", "FLOAT")]
    literals = [a for t in accepted for a in get_args(t) if get_origin(t) is Literal]
    if numbers and literals:  # e.g. `int | 'auto'`
        return f"[{numbers[0]}|{'|'.join(map(str, literals))}]"
    return "TEXT"


def _help(model: type[BaseModel], dotted: str, info) -> str:
    text = info.description or ""
    if info.is_required():
        return f"{text} [required]"
    if "[default:" in text:  # the description says what the default means
        return text
    default = effective_default(model, dotted)
    if default is None or default == []:  # unset: nothing to show
        return text
    return f"{text} [default: {plain(default)}]"


def _field_option(model: type[BaseModel], dotted: str, info, annotation, hidden: bool = False):
    flag, name, text = flag_name(model, dotted), option_name(dotted), _help(model, dotted, info)
    kind = metavar(dotted, annotation)
    if hasattr(model, "cli_flags") and annotation is bool:
        return click.option(f"--{flag}/--no-{flag}", name, default=None, help=text, hidden=hidden)
    if dotted in getattr(model, "cli_repeated", ()):
        return click.option(f"--{flag}", name, multiple=True, metavar=kind, help=text, hidden=hidden)
    return click.option(f"--{flag}", name, default=None, metavar=kind, help=text, hidden=hidden)


def config_options(model: type[BaseModel], config_file: bool = True, shown: tuple[str, ...] | None = None):
    """Decorator: `--config` (unless `config_file` is False: a second model of the same command)
    and one option per field of `model` (help from the field). With `shown` (section names), the
    other fields are accepted but left out of `--help` (a stage command lists its own section)."""
    excluded = getattr(model, "cli_exclude", ())

    def decorate(func):
        for dotted, info, annotation in reversed(list(iter_fields(model))):
            if dotted not in excluded:
                hidden = shown is not None and dotted.partition(".")[0] not in shown
                func = _field_option(model, dotted, info, annotation, hidden)(func)
        if not config_file:
            return func
        return click.option(
            "--config",
            "config_path",
            type=click.Path(exists=True, dir_okay=False),
            metavar="PATH",
            help="YAML config; flags override it.",
        )(func)

    return decorate


def resolve(model: type[BaseModel], config_path: str | None, options: dict[str, Any]):
    """Build and validate `model` from the YAML file and the flags (nothing runs before)."""
    fields = {option_name(d): (d, ann) for d, _, ann in iter_fields(model)}
    overrides = {}
    for key, raw in options.items():
        if key not in fields or raw is None or raw == ():
            continue
        dotted, annotation = fields[key]
        if isinstance(raw, tuple):
            overrides[dotted] = list(raw)
        elif isinstance(raw, bool):
            overrides[dotted] = raw
        else:
            overrides[dotted] = parse_value(raw, annotation)
    try:
        return build_config(model, config_path, overrides)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
