"""Parallel prompt sets: prompts per language, aligned by id, with the English original of each id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from icr.core.errors import DataError
from icr.core.languages import check_language
from icr.core.tables import load_table, require_columns

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


def _check_text_column(records: list[tuple[str, Any]], label: str, text_field: str, id_field: str | None) -> None:
    """A column name that no record has is a wrong setting, not a bad row: list the columns."""
    rows = [r for _, r in records if isinstance(r, dict)]
    if rows and all(text_field not in r for r in rows):
        require_columns(rows, [text_field], label, "data.text_field")
    if rows and id_field and all(id_field not in r for r in rows):
        require_columns(rows, [id_field], label, "data.id_field")


def language_prompts(
    records: list[tuple[str, Any]], label: str | Path, lang: str, id_field: str | None, text_field: str
) -> list[Prompt]:
    """Validate one language's records (`(where, record)` pairs from `label`): objects, unique ids,
    non-empty text, no NUL."""
    _check_text_column(records, str(label), text_field, id_field)
    path = label
    key = _pick_id_field(Path(label), records, id_field)
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


def load_language_file(path: Path, lang: str, id_field: str | None, text_field: str) -> list[Prompt]:
    """Read and validate one language's prompts file (see `language_prompts`)."""
    return language_prompts(_read_records(path), path, lang, id_field, text_field)


@dataclass(frozen=True)
class PromptSource:
    """Where a run's prompts are and how to read them (`data.*` of the run config)."""

    source: str
    id_field: str | None = None
    text_field: str = "instruction"
    split: str = "train"
    config: str | None = None
    language_field: str | None = None


def _folder_of_language_files(source: str, languages: list[str]) -> Path | None:
    """The folder of {lang}.jsonl/.json files behind `source` (embedded data, a local folder, a Hub
    dataset's JSON files), or None where `source` is a table for `datasets` to read."""
    if source.startswith("embedded:"):
        return resolve_prompt_source(source)
    path = Path(source).expanduser()
    if path.is_file():
        return None
    if not path.is_dir():
        try:  # a Hub dataset of {lang}.jsonl files (snapshot from the local cache offline)
            path = resolve_prompt_source(source)
        except DataError:
            return None
    return path if any(_find_language_file(path, lang) for lang in languages) else None


def _table_records(spec: PromptSource, languages: list[str]) -> dict[str, tuple[str, list[tuple[str, Any]]]]:
    """{lang: (label, records)} from one table with a language column (`language_field`, default
    'lang'), or, without one, from one `datasets` config per language named by its code."""
    field = spec.language_field
    if field is None and Path(spec.source).is_file():
        field = "lang"
    if field is None:
        out = {}
        for lang in languages:
            rows = load_table(spec.source, split=spec.split, config=lang)
            out[lang] = (f"{spec.source}[{lang}]", [(f"row {i}", r) for i, r in enumerate(rows, start=1)])
        return out
    rows = load_table(spec.source, split=spec.split, config=spec.config)
    require_columns(rows, [field], spec.source, "data.language_field")
    by_lang: dict[str, list[tuple[str, Any]]] = {}
    for i, row in enumerate(rows, start=1):
        by_lang.setdefault(str(row[field]), []).append((f"row {i}", row))
    missing = [lang for lang in languages if lang not in by_lang]
    if missing:
        raise DataError(
            f"{spec.source}: no prompts for language(s) {', '.join(missing)} in column {field!r} "
            f"(it holds {', '.join(sorted(by_lang))})"
        )
    return {lang: (f"{spec.source}[{field}={lang}]", by_lang[lang]) for lang in languages}


def _language_records(spec: PromptSource, languages: list[str]) -> dict[str, tuple[str | Path, list]]:
    """{lang: (label for messages, [(where, record)])} for every language of `languages`."""
    folder = None if spec.language_field else _folder_of_language_files(spec.source, languages)
    if folder is None:
        return _table_records(spec, languages)
    files = {}
    for lang in languages:
        found = _find_language_file(folder, lang)
        if found is None:
            raise DataError(f"{folder}: no prompts for language {lang!r} (expected {lang}.jsonl or {lang}.json)")
        files[lang] = (found, _read_records(found))
    return files


def load_prompt_set(
    source: str | PromptSource,
    languages: list[str],
    id_field: str | None = None,
    text_field: str = "instruction",
    limit: int | None = None,
    rows: list[int] | tuple[int, int] | None = None,
) -> PromptSet:
    """Load parallel prompts for `languages` (plus English, which every id must have) from a
    folder of {lang}.jsonl/.json files, or a table `datasets` reads (`PromptSource`). `rows` = [start,
    end) keeps the ids at those positions of the English order; `limit` then keeps the first N of them."""
    spec = source if isinstance(source, PromptSource) else PromptSource(source, id_field, text_field)
    for lang in languages:
        check_language(lang)
    wanted = list(dict.fromkeys(["en", *languages]))
    records = _language_records(spec, wanted)
    label = {lang: records[lang][0] for lang in wanted}
    english_prompts = language_prompts(records["en"][1], label["en"], "en", spec.id_field, spec.text_field)
    order = [p.id for p in english_prompts]
    if rows is not None:  # a block [start, end) of the English file order, before the limit
        if rows[0] >= len(order):
            raise DataError(f"{label['en']}: rows {list(rows)} start past its {len(order)} prompts")
        order = order[rows[0] : rows[1]]
    if limit is not None:
        order = order[:limit]
    keep = set(order)
    english = {p.id: p.text for p in english_prompts if p.id in keep}
    all_english_ids = {p.id for p in english_prompts}
    rank = {pid: i for i, pid in enumerate(order)}
    by_lang: dict[str, list[Prompt]] = {}
    for lang in languages:
        prompts = (
            english_prompts
            if lang == "en"
            else language_prompts(records[lang][1], label[lang], lang, spec.id_field, spec.text_field)
        )
        for p in prompts:
            if p.id not in all_english_ids:
                raise DataError(f"{label[lang]}:{p.where}: id {p.id}: no English counterpart in {label['en']}")
        by_lang[lang] = sorted((p for p in prompts if p.id in keep), key=lambda p: rank[p.id])
    return PromptSet(by_lang=by_lang, english=english)
