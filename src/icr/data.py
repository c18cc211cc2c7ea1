"""Records on disk and parallel prompt sets.

Every stage reads and writes JSON Lines. Writers append one complete line per record, unbuffered,
so a process killed at any moment leaves at most one truncated last line; `read_jsonl(...,
repair=True)` cuts it off with a warning, while a corrupt line anywhere else is an error naming
file and line. Whole files (manifests, finished outputs) are written to a temporary file and
renamed, so a reader never sees half of one. A write that fails (a full disk) is a
`DiskWriteError` naming the file and the free space, and leaves no part of its line or file; a
stop signal waits for the write in progress (`icr.faults`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from icr.errors import DataError
from icr.faults import append_whole, disk_errors, write_all, write_section
from icr.languages import check_language

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- JSON Lines I/O


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Read a JSON Lines file. A truncated last line (no newline, not valid JSON) is a crash
    remnant: with `repair` it is cut off the file with a warning, else it is an error."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    records = []
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n") or not raw
    offset = 0
    for lineno, line in enumerate(lines, start=1):
        is_last_partial = lineno == len(lines) and not complete
        if line.strip():
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                if is_last_partial and repair:
                    log.warning("%s:%d: truncated last line (interrupted write) removed", path, lineno)
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                    break
                hint = " (truncated by an interrupted write?)" if is_last_partial else ""
                raise DataError(f"{path}:{lineno}: corrupt JSON line{hint}: {err}") from None
            if is_last_partial:
                if repair:  # a complete object that lost only its newline: keep it, restore the newline
                    with open(path, "ab") as f:
                        f.write(b"\n")
                else:
                    raise DataError(f"{path}:{lineno}: last line has no newline (interrupted write?)")
            records.append(record)
        offset += len(line) + 1
    return records


def dumps_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"


class JsonlAppender:
    """Append records one complete line at a time, unbuffered, so a kill loses at most the line
    being written (which `read_jsonl(repair=True)` removes), a failed write (a full disk) leaves
    none of it (`icr.faults.append_whole`), and a stop signal waits for the line to be out."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab", buffering=0)  # noqa: SIM115  (closed by close() / __exit__)

    def write(self, record: dict[str, Any]) -> None:
        with write_section():
            append_whole(self._f.fileno(), self.path, dumps_line(record).encode("utf-8"))

    def close(self) -> None:
        try:
            with disk_errors(self.path):
                os.fsync(self._f.fileno())
        finally:
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside `path`, then rename: `path` is the old file or the new one, never a part. A
    failed write (full disk) is a `DiskWriteError` naming `path`; a stop signal waits for the rename."""
    with write_section(), disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files owner-only; give them the usual mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    _atomic_write_bytes(Path(path), "".join(dumps_line(r) for r in records).encode("utf-8"))


def write_text_atomic(path: str | Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n"
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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
