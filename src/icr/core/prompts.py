"""Parallel prompt sets: prompts per language, aligned by id, with the English original of each id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from icr.core.errors import DataError
from icr.core.languages import check_language

# ---------------------------------------------------------------- prompt sets


@dataclass(frozen=True)
class Prompt:
    id: str
    lang: str
    text: str
    where: str = field(default="", compare=False)  # 'line 3' / 'item 3' in the source file


@dataclass
class PromptSet:
    """Prompts per language, aligned by id; `english[id]` is the English original of every id."""

    by_lang: dict[str, list[Prompt]]
    english: dict[str, str]

    @property
    def languages(self) -> list[str]:
        return list(self.by_lang)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_lang.values())


def embedded_path(name: str) -> Path:
    """Path of a data folder shipped inside the package (`resources/<name>`)."""
    path = Path(str(resources.files("icr") / "resources" / name))
    if not path.exists():
        raise DataError(f"no embedded data named {name!r} (looked in {path})")
    return path


def resolve_prompt_source(source: str) -> Path:
    """'embedded:demo' -> packaged prompts; an existing folder -> itself; else a Hub dataset id."""
    if source.startswith("embedded:"):
        return embedded_path(source.split(":", 1)[1]) / "prompts"
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DataError(f"{source}: expected a folder with one {{lang}}.jsonl or {{lang}}.json per language")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            source, repo_type="dataset", allow_patterns=["*.json", "*.jsonl", "**/*.json", "**/*.jsonl"]
        )
    except Exception as err:  # offline, missing repo, ...: say what was tried
        raise DataError(f"{source}: not a local folder, and loading it as a Hub dataset failed: {err}") from None
    return Path(local)


def _find_language_file(folder: Path, lang: str) -> Path | None:
    for name in (f"{lang}.jsonl", f"{lang}.json"):
        hits = [folder / name] if (folder / name).exists() else sorted(folder.rglob(name))
        if hits:
            return hits[0]
    return None


def _read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Records with a location label ('line 3' for JSON Lines, 'item 3' for a JSON list)."""
    if path.suffix == ".jsonl":
        out = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    out.append((f"line {lineno}", json.loads(line)))
                except ValueError as err:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {err}") from None
        return out
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(f"{path}: invalid JSON: {err}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of objects")
    return [(f"item {i}", item) for i, item in enumerate(items, start=1)]


def _pick_id_field(path: Path, records: list[tuple[str, dict]], id_field: str | None) -> str:
    if id_field:
        return id_field
    if not records:
        raise DataError(f"{path}: no prompts")
    first = records[0][1] if records else {}
    for candidate in ("instruction_id", "id"):
        if isinstance(first, dict) and candidate in first:
            return candidate
    raise DataError(f"{path}: no 'instruction_id' or 'id' field; set data.id_field")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_language_file(path: Path, lang: str, id_field: str | None, text_field: str) -> list[Prompt]:
    """Read and validate one language's prompts: objects, unique ids, non-empty text, no NUL."""
    records = _read_records(path)
    key = _pick_id_field(path, records, id_field)
    prompts, seen = [], {}
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{path}:{where}: expected a JSON object, got {type(record).__name__}")
        if key not in record or record[key] is None or isinstance(record[key], (dict, list, bool)):
            raise DataError(f"{path}:{where}: missing or invalid id field {key!r}")
        pid = str(record[key])  # ids compare as strings: 1 and "1" are the same id (and so a duplicate)
        text = record.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{where}: id {pid}: {text_field!r} is missing or empty")
        if "\x00" in text:
            raise DataError(f"{path}:{where}: id {pid}: text contains a NUL byte")
        if not _is_unicode(text) or not _is_unicode(pid):  # a stray \udXXX escape: no writer can encode it
            raise DataError(f"{path}:{where}: id {pid!a}: id or text contains a lone surrogate (invalid Unicode)")
        if pid in seen:
            raise DataError(f"{path}:{where}: id {pid}: duplicate id (first at {seen[pid]})")
        seen[pid] = where
        prompts.append(Prompt(pid, lang, text, where))
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def load_prompt_set(
    source: str,
    languages: list[str],
    id_field: str | None = None,
    text_field: str = "instruction",
    limit: int | None = None,
) -> PromptSet:
    """Load parallel prompts for `languages` (plus English, which every id must have)."""
    folder = resolve_prompt_source(source)
    for lang in languages:
        check_language(lang)
    files: dict[str, Path] = {}
    for lang in dict.fromkeys(["en", *languages]):
        found = _find_language_file(folder, lang)
        if found is None:
            raise DataError(f"{folder}: no prompts for language {lang!r} (expected {lang}.jsonl or {lang}.json)")
        files[lang] = found
    english_prompts = load_language_file(files["en"], "en", id_field, text_field)
    order = [p.id for p in english_prompts]
    if limit is not None:
        order = order[:limit]
    keep = set(order)
    english = {p.id: p.text for p in english_prompts if p.id in keep}
    all_english_ids = {p.id for p in english_prompts}
    rank = {pid: i for i, pid in enumerate(order)}
    by_lang: dict[str, list[Prompt]] = {}
    for lang in languages:
        prompts = english_prompts if lang == "en" else load_language_file(files[lang], lang, id_field, text_field)
        for p in prompts:
            if p.id not in all_english_ids:
                raise DataError(f"{files[lang]}:{p.where}: id {p.id}: no English counterpart in {files['en']}")
        by_lang[lang] = sorted((p for p in prompts if p.id in keep), key=lambda p: rank[p.id])
    return PromptSet(by_lang=by_lang, english=english)
