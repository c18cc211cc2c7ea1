"""The wheel works alone: built as `make dist` builds it, installed into a fresh folder (no source
tree on the path), its `icr` runs and carries every resource file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the project, installed (without dependencies) into a folder."""
    work = tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, work / name)
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = "from setuptools import build_meta as b; print(b.build_wheel('dist'))"
    name = subprocess.run([sys.executable, "-c", build], cwd=work, check=True, capture_output=True, text=True)
    wheel = work / "dist" / name.stdout.strip().splitlines()[-1]
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
    )
    return target


def icr(target: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    code = (
        "import sys, icr; assert icr.__file__.startswith(sys.argv[1]), icr.__file__; "
        "from icr.cli import main; main(sys.argv[2:], prog_name='icr')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(target), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_the_installed_wheel_runs_and_holds_every_resource(installed, tmp_path):
    version = icr(installed, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == "icr 0.1.0", version.stderr
    help_text = icr(installed, "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "Run commands" in help_text.stdout
    packaged_config = installed / "icr" / "resources" / "demo" / "demo.yaml"
    embedded = "embedded:smollm2-135m-instruct"  # the packaged config's policy is the demo's stage-0 output
    config = icr(installed, "config", "--config", str(packaged_config), "--models.policy", embedded, cwd=tmp_path)
    assert config.returncode == 0 and "embedded:demo" in config.stdout, config.stderr
    shipped = {p.relative_to(REPO / "src") for p in (REPO / "src" / "icr").rglob("*") if p.is_file()}
    shipped = {p for p in shipped if "__pycache__" not in p.parts}
    present = {p.relative_to(installed) for p in (installed / "icr").rglob("*") if p.is_file()}
    assert shipped - present == set()
