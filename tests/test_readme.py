"""The README and docs/ show only commands that work: every `icr` line of their shell blocks is run
with `--help` appended (an unknown flag fails), every `make` target and `pip install` extra they name
exists, the README's command table lists every command, the README stays short, and every relative
link points to an existing file (and heading)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
SHELL_LANGUAGES = {"bash", "sh", "console", "shell"}
MAX_README_LINES = 120


def shell_commands(path: Path) -> list[str]:
    """The commands of a Markdown file's bash/sh/console blocks: continuation lines joined, a
    console prompt (`$ `) dropped, comments and blank lines left out."""
    commands: list[str] = []
    language = None
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        fence = re.match(r"^\s*```\s*([\w-]*)", line)
        if fence:
            language = None if language is not None else fence.group(1).lower()
            continue
        if language not in SHELL_LANGUAGES:
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if language == "console":
            if not text.startswith("$ "):
                continue  # the command's output
            text = text[2:]
        if text and not text.startswith("#"):
            commands.append(text)
    return commands


def words(command: str) -> list[str]:
    """The command's words up to a redirection, pipe or second command; comments dropped."""
    out = []
    for word in shlex.split(command, comments=True):
        if word in {">", ">>", "|", "&&", "||", ";"} or word.startswith((">", "2>")):
            break
        out.append(word)
    return out


def _commands_starting(first: str, pages=PAGES) -> list[tuple[str, list[str]]]:
    found = []
    for page in pages:
        for command in shell_commands(page):
            argv = words(command)
            if argv and argv[0] == first:
                found.append((f"{page.relative_to(REPO)}: {command}", argv))
    return found


ICR_LINES = _commands_starting("icr")


def _icr(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "icr.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


@pytest.fixture(scope="module")
def top_help() -> str:
    result = _icr("--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def listed_commands(help_text: str) -> list[str]:
    """The commands of `icr --help`'s sections ("Run commands:", "Stage commands:", ...)."""
    sections = re.split(r"^\w+ commands:\n", help_text, flags=re.M)[1:]
    return [name for section in sections for name in re.findall(r"^  ([a-z][\w-]*)", section, re.M)]


def _has_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w.-])", help_text) is not None


def _flags(argv: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in argv if word.startswith("-") and word not in {"-", "--"}]


def test_the_pages_show_icr_commands():
    assert any(where.startswith("README.md") for where, _ in ICR_LINES)


@pytest.mark.parametrize("where, argv", ICR_LINES, ids=[where for where, _ in ICR_LINES])
def test_icr_command_is_accepted_with_every_flag_it_uses(where, argv, top_help):
    commands = listed_commands(top_help)
    position = next((i for i, word in enumerate(argv) if word in commands), None)
    assert position is not None, f"{where}: names no icr command ({', '.join(commands)})"
    for flag in _flags(argv[1:position]):
        assert _has_flag(top_help, flag), f"{where}: `icr --help` has no {flag}"
    result = _icr(*argv[1:], "--help")
    assert result.returncode == 0, f"{where}: exit code {result.returncode}\n{result.stderr}"
    shared = None  # a stage's help lists its own options and points to `icr run --help` for the shared ones
    for flag in _flags(argv[position + 1 :]):
        if _has_flag(result.stdout, flag):
            continue
        shared = shared or _icr("run", "--help").stdout
        assert "see `icr run --help`" in result.stdout and _has_flag(shared, flag), (
            f"{where}: neither `icr {argv[position]} --help` nor the shared options of `icr run --help` have {flag}"
        )


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", text, re.M))


def _make_lines() -> list[tuple[str, list[str]]]:
    lines = _commands_starting("make")
    for page in PAGES:  # `make x` in inline code too
        for span in re.findall(r"`(make [^`]+)`", page.read_text(encoding="utf-8")):
            lines.append((f"{page.relative_to(REPO)}: {span}", words(span)))
    return lines


def test_make_commands_name_existing_targets():
    targets = makefile_targets()
    assert {"setup", "demo", "test", "docs"} <= targets
    lines = _make_lines()
    assert any(where.startswith("README.md") for where, _ in lines)
    for where, argv in lines:
        named = [word for word in argv[1:] if "=" not in word and not word.startswith("-")]
        assert named, f"{where}: names no target"
        for target in named:
            assert target in targets, f"{where}: the Makefile has no target {target!r}"


def pyproject_extras() -> set[str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return set(project.get("optional-dependencies", {}))


def test_pip_install_lines_name_existing_extras():
    extras = pyproject_extras()
    lines = [(where, argv) for where, argv in _commands_starting("pip") if len(argv) > 1 and argv[1] == "install"]
    assert any(where.startswith("README.md") for where, _ in lines)
    for where, argv in lines:
        for word in argv[2:]:
            match = re.fullmatch(r"(?:icr|\.)\[([^\]]*)\]", word)
            if match:
                for extra in match.group(1).split(","):
                    assert extra.strip() in extras, f"{where}: pyproject.toml has no extra {extra!r}"


def test_readme_command_table_lists_every_command(top_help):
    rows = re.findall(r"^\| `icr ([a-z][\w-]*)` \|", README.read_text(encoding="utf-8"), re.M)
    assert len(rows) == len(set(rows)), "a command is listed twice"
    assert sorted(rows) == sorted(listed_commands(top_help))


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.M | re.S)


def _without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", _without_code_blocks(text))


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", _without_code_blocks(path.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def relative_links(path: Path) -> list[str]:
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _without_code(path.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_point_to_existing_files(page):
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        assert file.exists(), f"{page.relative_to(REPO)}: link {link} points to no file"
        if anchor and file.suffix == ".md":
            assert anchor in heading_anchors(file), f"{page.relative_to(REPO)}: {link}: no such heading"
