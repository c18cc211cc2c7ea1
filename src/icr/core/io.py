"""Records on disk: JSON Lines and whole files, safe against kills and full disks.

Every stage reads and writes JSON Lines. Writers append one complete line per record, unbuffered,
so a process killed at any moment leaves at most one truncated last line; `read_jsonl(...,
repair=True)` cuts it off with a warning, while a corrupt line anywhere else is an error naming
file and line. Whole files (manifests, finished outputs) are written to a temporary file and
renamed, so a reader never sees half of one. A write that fails (a full disk) is a
`DiskWriteError` naming the file and the free space, and leaves no part of its line or file; a
stop signal waits for the write in progress (`icr.core.faults`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from icr.core.errors import DataError
from icr.core.faults import append_whole, disk_errors, write_all, write_section

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
    none of it (`icr.core.faults.append_whole`), and a stop signal waits for the line to be out."""

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
