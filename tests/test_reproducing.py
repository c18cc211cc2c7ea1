"""docs/reproducing.md holds configs/paper-llama3-8b.yaml and `icr eval`'s defaults to the paper:
every value its tables give must be the file's (or the default's), and every field the file sets
must have a row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from icr.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reproducing.md"
PAPER_CONFIG = REPO / "configs" / "paper-llama3-8b.yaml"
COLUMNS = ["setting", "paper / released", "source", "our field", "ours", "same?"]
# the settings the table must cover (matched against the 'setting' column)
REQUIRED_SETTINGS = [
    "policy",
    "reference π_ref",
    "training prompts",
    "languages",
    "samples per prompt N",
    "temperature T",
    "top_p",
    "max new tokens",
    "chat template",
    "crosslingual prefix",
    "scored tokens",
    "reward precision",
    "α grid",
    "language filter",
    "DPO β",
    "NLL weight",
    "NLL normalisation",
    "learning rate",
    "global batch",
    "epochs",
    "iterations",
    "reward reference",
    "eval temperature",
    "eval top_p",
    "eval max tokens",
    "judge",
    "LC",
]


def table_rows(text: str) -> list[dict[str, str]]:
    """Rows of every Markdown table whose header is COLUMNS (`\\|` inside a cell is a literal bar)."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: ") and header == COLUMNS:
            rows.append(dict(zip(COLUMNS, cells)))
    return rows


ROWS = table_rows(DOC.read_text(encoding="utf-8"))


def code(cell: str) -> str | None:
    match = re.fullmatch(r"`(.+)`", cell)
    return match.group(1) if match else None


def dotted_get(tree, dotted: str):
    for key in dotted.split("."):
        tree = getattr(tree, key)
    return tree


def test_every_row_is_sourced_and_judged():
    assert len(ROWS) >= 40
    for row in ROWS:
        assert row["source"] and row["same?"], row
        same = row["same?"]
        assert same.startswith(("yes", "differs", "unverified", "n/a", "speed", "memory", "ignored")), row
        if same.startswith("differs"):
            assert len(same) > len("differs: ") + 20, f"a difference needs its reason: {row}"
    settings = [r["setting"] for r in ROWS]
    missing = [s for s in REQUIRED_SETTINGS if not any(name.startswith(s) for name in settings)]
    assert not missing, f"docs/reproducing.md lacks rows for {missing}"


def test_paper_config_agrees_with_the_table(path: Path = PAPER_CONFIG):
    config = load_config(path)
    checked = 0
    for row in ROWS:
        field = code(row["our field"])
        if field is None or field.startswith("icr "):
            continue
        # read like a YAML config value (so `off` means what it means in the file: icr.config maps it)
        expected = dotted_get(load_config(overrides={field: yaml.safe_load(code(row["ours"]))}), field)
        actual = dotted_get(config, field)
        assert actual == expected, f"{field}: configs/paper-llama3-8b.yaml has {actual!r}, the table {expected!r}"
        checked += 1
    assert checked >= 30


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


def test_every_field_the_paper_config_sets_has_a_row():
    tabled = {code(r["our field"]) for r in ROWS}
    set_in_file = _leaves(yaml.safe_load(PAPER_CONFIG.read_text(encoding="utf-8")))
    assert [f for f in set_in_file if f not in tabled] == []


@pytest.mark.parametrize(
    "row", [r for r in ROWS if (code(r["our field"]) or "").startswith("icr eval ")], ids=lambda r: r["setting"]
)
def test_icr_eval_defaults_agree_with_the_table(row):
    from icr.cli.options import effective_default, flag_name
    from icr.config import EvalConfig, iter_fields

    option = code(row["our field"]).removeprefix("icr eval ")
    dotted = next(d for d, _, _ in iter_fields(EvalConfig) if f"--{flag_name(EvalConfig, d)}" == option)
    assert effective_default(EvalConfig, dotted) == yaml.safe_load(code(row["ours"])), row


def test_a_disagreeing_config_is_caught(tmp_path):
    """The check can fail: a copy of the paper config with one value changed disagrees with the table."""
    text = PAPER_CONFIG.read_text(encoding="utf-8").replace("max_new_tokens: 2400", "max_new_tokens: 2048")
    changed = tmp_path / "paper.yaml"
    changed.write_text(text, encoding="utf-8")
    assert load_config(changed).generate.max_new_tokens == 2048
    with pytest.raises(AssertionError, match="generate.max_new_tokens"):
        test_paper_config_agrees_with_the_table(changed)
