"""docs/configuration.md is generated from the config models: the committed page must be what
scripts/gen_config_docs.py writes from the models as they are, so a field cannot change unseen."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", REPO / "scripts" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_md_is_what_the_generator_writes():
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == _generator().config_doc(), "docs/configuration.md is stale: run `make docs`"


def test_every_field_of_every_config_model_is_documented():
    gen = _generator()
    text = gen.config_doc()
    models = gen.collect([model for model, _ in gen.COMMAND_CONFIGS])
    for model in models:
        section = text.split(f"\n## {model.__name__}\n", 1)[1].split("\n## ", 1)[0]
        for name in model.model_fields:
            assert f"| `{name}` |" in section, f"{model.__name__}.{name} missing from its section"
