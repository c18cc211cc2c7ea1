"""Tables of records from anywhere `datasets` reads: one file, a local folder, a Hub dataset.

    x.jsonl / x.json        JSON Lines or a JSON list (read directly: errors name the line)
    x.parquet / x.csv       read with pyarrow
    x.arrow                 an Arrow file as `datasets` writes it (memory-mapped, not copied)
    a folder                `datasets.load_dataset(folder, name=config, split=split)`: a Hub
                            dataset's layout, its README's `configs:` included
    org/name                the same for a Hub dataset id, from the local Hugging Face cache when
                            HF_HUB_OFFLINE=1 (nothing downloads then)

Rows come back as plain dicts in file order. `require_columns` turns a wrong column name into a
`DataError` that lists the columns the table has.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from icr.core.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


def _read_json_file(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as err:
            raise DataError(f"{path}: invalid JSON: {err}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON: {err}") from None
    return rows


def _read_columnar_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # every column as text: a CSV does not say that "007" is an id rather than the number 7
        with open(path, encoding="utf-8", newline="") as f:
            names = next(csv.reader(f), [])
        options = pacsv.ConvertOptions(column_types={name: pa.string() for name in names})
        return pacsv.read_csv(path, convert_options=options).to_pylist()
    from datasets import Dataset

    return Dataset.from_file(str(path)).to_list()


def _load_dataset(source: str, config: str | None, split: str) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset

        dataset = load_dataset(source, name=config, split=split)
    except Exception as err:  # missing split/config, not cached offline, unreadable files: say what was tried
        where = "a local folder" if Path(source).is_dir() else "a Hub dataset id (from the local cache offline)"
        raise DataError(
            f"{source}: loading it with datasets as {where} (config={config!r}, split={split!r}) failed: {err}"
        ) from None
    return dataset.to_list()


def load_table(source: str | Path, *, split: str = "train", config: str | None = None) -> list[dict[str, Any]]:
    """The rows of `source` (see the module docstring); `split` and `config` apply to folders and
    Hub datasets only."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in FILE_SUFFIXES:
            raise DataError(f"{path}: unknown table format (expected one of {', '.join(FILE_SUFFIXES)})")
        rows = _read_json_file(path) if path.suffix in (".jsonl", ".json") else _read_columnar_file(path)
    elif path.suffix in FILE_SUFFIXES:
        raise DataError(f"{path}: no such file")
    else:
        rows = _load_dataset(str(source), config, split)
    bad = next((i for i, row in enumerate(rows, start=1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise DataError(f"{source}: row {bad} is not an object")
    return rows


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Column names in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


def require_columns(rows: list[dict[str, Any]], columns: list[str], source: str | Path, setting: str = "") -> None:
    """A `DataError` naming the missing columns and listing those the table has."""
    have = columns_of(rows)
    missing = [c for c in columns if c not in have]
    if missing:
        hint = f" (set {setting})" if setting else ""
        raise DataError(
            f"{source}: no column {', '.join(repr(m) for m in missing)}{hint}; its columns: {', '.join(have) or 'none'}"
        )
