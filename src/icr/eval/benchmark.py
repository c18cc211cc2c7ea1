"""The X-AlpacaEval benchmark and model outputs: loading, and validation against the benchmark.

Outputs are validated against the reference before judging: a missing or duplicate id, an unknown
id or an instruction that differs from the reference's is an error naming the id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from icr.core.errors import DataError
from icr.core.io import read_json, read_jsonl
from icr.core.languages import check_language
from icr.core.prompts import resolve_prompt_source

DEFAULT_REFERENCE = "gpt-4-turbo-2024-04-09"


class OutputsError(DataError):
    """Model outputs that do not match the benchmark; the message names the file and the id."""


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise OutputsError(f"{path}: expected a JSON list of objects")
    return records


def _language_file(folder: Path, lang: str) -> Path | None:
    for rel in (f"{lang}.json", f"{lang}.jsonl", f"{lang}/model_outputs.json"):
        if (folder / rel).is_file():
            return folder / rel
    return None


def resolve_sources(prompts: str, reference: str | None) -> tuple[Path, Path]:
    """(prompts folder, reference folder). `prompts` is a folder or Hub dataset holding
    {lang}.json, or a benchmark root with prompts/ and reference/<name>/ (like X-AlpacaEval's);
    the reference defaults to that root's reference/gpt-4-turbo-2024-04-09."""
    root = resolve_prompt_source(prompts)
    prompt_dir = root / "prompts" if (root / "prompts").is_dir() else root
    if reference is not None:
        ref = Path(reference)
        return prompt_dir, ref if ref.is_dir() else resolve_prompt_source(reference)
    for candidate in (root / "reference" / DEFAULT_REFERENCE, prompt_dir.parent / "reference" / DEFAULT_REFERENCE):
        if candidate.is_dir():
            return prompt_dir, candidate
    raise DataError(f"{prompts}: no reference/{DEFAULT_REFERENCE}/ beside the prompts; pass --reference-outputs")


def _attach_ids(records: list[dict], ids: list[Any], path: Path) -> list[dict]:
    """Records without any `id` (alpaca_eval's own files) get the benchmark's ids by position."""
    if any("id" in r for r in records):
        return records
    if len(records) > len(ids):
        raise OutputsError(f"{path}: no 'id' fields and {len(records)} records for {len(ids)} instructions")
    return [{**r, "id": i} for r, i in zip(records, ids)]


def load_benchmark(prompt_dir: Path, reference_dir: Path, lang: str, limit: int | None = None) -> list[dict]:
    """The first `limit` instructions of `lang` (file order) with their reference outputs:
    records {id, dataset, instruction, reference, reference_generator}."""
    check_language(lang)
    path = _language_file(prompt_dir, lang)
    if path is None:
        raise DataError(f"{prompt_dir}: no prompts for language {lang!r} (expected {lang}.json)")
    prompts, seen = [], set()
    for k, r in enumerate(_read_records(path), start=1):
        if r.get("id") is None or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise DataError(f"{path}: item {k}: needs an 'id' and a non-empty 'instruction'")
        if str(r["id"]) in seen:
            raise DataError(f"{path}: id {r['id']}: duplicate id")
        seen.add(str(r["id"]))
        prompts.append(r)
    ref_path = _language_file(reference_dir, lang)
    if ref_path is None:
        raise DataError(f"{reference_dir}: no reference outputs for language {lang!r}")
    reference = index_outputs(_read_records(ref_path), prompts, ref_path)
    items = []
    for p in prompts[:limit]:
        ref = reference[str(p["id"])]
        items.append(
            {
                "id": p["id"],
                "dataset": p.get("dataset", ""),
                "instruction": p["instruction"],
                "reference": ref["output"],
                "reference_generator": str(ref.get("generator", "reference")),
            }
        )
    return items


def index_outputs(
    records: list[dict], benchmark: list[dict], path: Path, required: list[Any] | None = None
) -> dict[str, dict]:
    """Validate outputs against the benchmark instructions and index them by id (as a string).

    Errors (naming the id): a duplicate id, an id not in the benchmark, an instruction that differs
    from the benchmark's, an output that is not a string, and any id of `required` (default: all
    benchmark ids) without an output."""
    records = _attach_ids(records, [b["id"] for b in benchmark], path)
    expected = {str(b["id"]): b["instruction"] for b in benchmark}
    by_id: dict[str, dict] = {}
    for k, r in enumerate(records, start=1):
        if r.get("id") is None:
            raise OutputsError(f"{path}: item {k}: no 'id'")
        rid = str(r["id"])
        if rid in by_id:
            raise OutputsError(f"{path}: id {rid}: duplicate id")
        if rid not in expected:
            raise OutputsError(f"{path}: id {rid}: not an id of the benchmark")
        if str(r.get("instruction", "")).strip() != expected[rid].strip():
            raise OutputsError(
                f"{path}: id {rid}: instruction differs from the reference's "
                f"({str(r.get('instruction', ''))[:60]!r} vs {expected[rid][:60]!r})"
            )
        if not isinstance(r.get("output"), str):
            raise OutputsError(f"{path}: id {rid}: 'output' is missing or not a string")
        by_id[rid] = r
    missing = [str(i) for i in (required if required is not None else expected) if str(i) not in by_id]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise OutputsError(f"{path}: no output for id {', '.join(missing[:5])}{more}")
    return by_id


def read_outputs(folder: str | Path, lang: str, items: list[dict]) -> dict[str, str]:
    """Existing outputs of `lang` in `folder`, validated to cover every evaluated item."""
    path = _language_file(Path(folder), lang)
    if path is None:
        raise OutputsError(
            f"{folder}: no outputs for language {lang!r} (expected {lang}.json or {lang}/model_outputs.json)"
        )
    by_id = index_outputs(_read_records(path), items, path)
    return {rid: r["output"] for rid, r in by_id.items()}
