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
    """The types a field accepts: (list[str],) for a list, (str, NoneType) for `str | None`, ..."""
    if get_origin(annotation) is list:
        return (annotation,)
    return get_args(annotation) or (annotation,)


def choices(annotation) -> tuple[str, ...]:
    """The values of a Literal field (or of a list of Literals), else ()."""
    inner = get_args(annotation)[0] if get_origin(annotation) is list else annotation
    return tuple(get_args(inner)) if get_origin(inner) is Literal else ()


def parse_value(raw: str, annotation) -> Any:
    """A flag's text as the field's value. Strings are taken verbatim (templates, ids, 'no' the
    Norwegian code); lists are 'a,b' or '[a, b]'; other values are YAML scalars ('true', '1e-6')."""
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


def _help(model: type[BaseModel], dotted: str, info, annotation) -> str:
    text = info.description or ""
    allowed = choices(annotation)
    if allowed:
        text += f" Choices: {', '.join(allowed)}."
    if info.is_required():
        return f"{text} [required]"
    if "[default:" in text:  # the description says what the default means
        return text
    return f"{text} [default: {effective_default(model, dotted)!r}]"


def _field_option(model: type[BaseModel], dotted: str, info, annotation):
    flag, name, text = flag_name(model, dotted), option_name(dotted), _help(model, dotted, info, annotation)
    if hasattr(model, "cli_flags") and annotation is bool:
        return click.option(f"--{flag}/--no-{flag}", name, default=None, help=text)
    if dotted in getattr(model, "cli_repeated", ()):
        return click.option(f"--{flag}", name, multiple=True, metavar="VALUE", help=text)
    return click.option(f"--{flag}", name, default=None, metavar="VALUE", help=text)


def config_options(model: type[BaseModel], config_file: bool = True):
    """Decorator: `--config` (unless `config_file` is False: a second model of the same command)
    and one option per field of `model` (help from the field)."""
    excluded = getattr(model, "cli_exclude", ())

    def decorate(func):
        for dotted, info, annotation in reversed(list(iter_fields(model))):
            if dotted not in excluded:
                func = _field_option(model, dotted, info, annotation)(func)
        if not config_file:
            return func
        return click.option(
            "--config",
            "config_path",
            type=click.Path(exists=True, dir_okay=False),
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
