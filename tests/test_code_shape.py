"""The code's shape stays readable: modules under ~400 lines, functions under ~60, and each package
of `src/icr` named in `docs/architecture.md`'s tree and in the layer contract."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "icr"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_modules_are_at_most_400_lines():
    long = {str(p.relative_to(SRC)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_functions_are_at_most_60_lines():
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC)}:{node.lineno} {node.name}"] = n
    assert not long, long


def test_every_package_is_a_layer_and_is_drawn_in_the_architecture():
    packages = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").exists())
    top_modules = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__"))
    # the layers contract's list (pyproject.toml; read as text: tomllib is not in Python 3.10)
    layers = re.search(r"layers = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S).group(1)
    names = re.findall(r'"([^"]+)"', layers)
    layered = {name.strip().removeprefix("icr.") for layer in names for name in layer.split("|")}
    assert set(packages) | set(top_modules) <= layered, set(packages) | set(top_modules) - layered
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name in packages + top_modules:
        assert f"icr.{name}" in doc, name
