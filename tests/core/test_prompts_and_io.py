"""Prompt sets and JSON Lines I/O: every bad input is a clear error naming file, line and id."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import SHARED_DATA
from icr.core.errors import DataError
from icr.core.io import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from icr.core.prompts import load_prompt_set, resolve_prompt_source

UF = SHARED_DATA / "ultrafeedback-multilingual"
XA = SHARED_DATA / "x-alpacaeval" / "prompts"
needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not available")


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def prompts_dir(tmp_path: Path, en: list, **others: list) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir(exist_ok=True)
    write_lines(folder / "en.jsonl", en)
    for lang, records in others.items():
        write_lines(folder / f"{lang}.jsonl", records)
    return folder


EN = [{"instruction_id": f"q{i}", "instruction": f"Question number {i}?"} for i in range(1, 5)]
ES = [{"instruction_id": f"q{i}", "instruction": f"¿Pregunta número {i}?"} for i in (3, 1, 2)]


# ---------------------------------------------------------------- good inputs


def test_loads_aligned_prompts_in_english_order(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=ES)
    ps = load_prompt_set(str(folder), ["en", "es"])
    assert ps.languages == ["en", "es"]
    assert [p.id for p in ps.by_lang["en"]] == ["q1", "q2", "q3", "q4"]
    assert [p.id for p in ps.by_lang["es"]] == ["q1", "q2", "q3"]  # English order; q4 has no Spanish
    assert ps.by_lang["es"][0].text == "¿Pregunta número 1?" and ps.by_lang["es"][0].lang == "es"
    assert ps.english == {f"q{i}": f"Question number {i}?" for i in range(1, 5)}
    assert len(ps) == 7


def test_limit_takes_the_first_english_ids(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=ES)
    ps = load_prompt_set(str(folder), ["en", "es"], limit=2)
    assert [p.id for p in ps.by_lang["en"]] == ["q1", "q2"]
    assert [p.id for p in ps.by_lang["es"]] == ["q1", "q2"]
    assert set(ps.english) == {"q1", "q2"}


def test_english_is_loaded_even_if_not_requested(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=ES)
    ps = load_prompt_set(str(folder), ["es"])
    assert ps.languages == ["es"] and ps.english["q3"] == "Question number 3?"


def test_json_list_and_jsonl_both_load_and_int_ids_become_strings(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "en.json").write_text(json.dumps([{"id": 1, "instruction": "One"}, {"id": 2, "instruction": "Two"}]))
    write_lines(folder / "de.jsonl", [{"id": "2", "instruction": "Zwei"}])
    ps = load_prompt_set(str(folder), ["en", "de"])
    assert [p.id for p in ps.by_lang["en"]] == ["1", "2"]
    assert ps.by_lang["de"][0].id == "2" and ps.english["2"] == "Two"
    assert ps.by_lang["en"][1].where == "item 2" and ps.by_lang["de"][0].where == "line 1"


def test_custom_id_and_text_fields(tmp_path):
    folder = prompts_dir(tmp_path, [{"key": "a", "q": "Hello?"}])
    ps = load_prompt_set(str(folder), ["en"], id_field="key", text_field="q")
    assert ps.by_lang["en"][0].id == "a" and ps.by_lang["en"][0].text == "Hello?"


def test_embedded_demo_prompts():
    ps = load_prompt_set("embedded:demo", ["en", "es", "de", "fr", "ru"], limit=3)
    assert all(len(v) == 3 for v in ps.by_lang.values())
    assert [p.id for p in ps.by_lang["ru"]] == [p.id for p in ps.by_lang["en"]]


@needs_shared
def test_real_ultrafeedback_slice():
    ps = load_prompt_set(str(UF / "random_100"), ["en", "es"], limit=5)
    assert [p.id for p in ps.by_lang["es"]] == [p.id for p in ps.by_lang["en"]]
    assert len(ps.by_lang["en"]) == 5
    first = json.loads((UF / "random_100" / "en.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert ps.by_lang["en"][0].id == first["instruction_id"] and ps.by_lang["en"][0].text == first["instruction"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", p.id) for p in ps.by_lang["en"])
    full = load_prompt_set(str(UF / "random_100"), ["en", "es"])
    assert len(full.by_lang["en"]) == 100 and len(full.by_lang["es"]) == 100


@needs_shared
def test_real_x_alpacaeval_json_lists_with_int_ids():
    ps = load_prompt_set(str(XA), ["en", "es", "zh"], limit=4)
    assert [p.id for p in ps.by_lang["en"]] == ["1", "2", "3", "4"]
    assert [p.id for p in ps.by_lang["zh"]] == ["1", "2", "3", "4"]
    raw = json.loads((XA / "es.json").read_text(encoding="utf-8"))
    assert ps.by_lang["es"][0].text == raw[0]["instruction"]


# ---------------------------------------------------------------- bad inputs


def test_missing_english_counterpart(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=ES + [{"instruction_id": "q99", "instruction": "¿Huérfana?"}])
    with pytest.raises(DataError) as err:
        load_prompt_set(str(folder), ["en", "es"])
    msg = str(err.value)
    assert "es.jsonl" in msg and "line 4" in msg and "q99" in msg and "English" in msg


def test_duplicate_id_int_and_string_is_a_duplicate(tmp_path):
    folder = tmp_path / "dup"
    folder.mkdir()
    (folder / "en.json").write_text(
        json.dumps(
            [{"id": 1, "instruction": "One"}, {"id": 2, "instruction": "Two"}, {"id": "1", "instruction": "One again"}]
        )
    )
    with pytest.raises(DataError) as err:
        load_prompt_set(str(folder), ["en"])
    msg = str(err.value)
    assert "en.json" in msg and "item 3" in msg and "id 1" in msg and "duplicate" in msg and "item 1" in msg


def test_duplicate_id_in_jsonl(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=ES + [{"instruction_id": "q1", "instruction": "¿Otra vez?"}])
    with pytest.raises(DataError, match=r"es\.jsonl:line 4: id q1: duplicate id \(first at line 2\)"):
        load_prompt_set(str(folder), ["en", "es"])


@pytest.mark.parametrize("text", ["", "   \n\t ", None, 42])
def test_empty_or_missing_text(tmp_path, text):
    bad = {"instruction_id": "q2", "instruction": text}
    if text is None:
        del bad["instruction"]
    folder = prompts_dir(tmp_path, EN, es=[ES[1], bad])
    with pytest.raises(DataError) as err:
        load_prompt_set(str(folder), ["en", "es"])
    msg = str(err.value)
    assert "es.jsonl" in msg and "line 2" in msg and "q2" in msg and "instruction" in msg


def test_nul_byte(tmp_path):
    folder = prompts_dir(tmp_path, EN[:2] + [{"instruction_id": "q3", "instruction": "bad\x00text"}])
    with pytest.raises(DataError) as err:
        load_prompt_set(str(folder), ["en"])
    msg = str(err.value)
    assert "en.jsonl" in msg and "line 3" in msg and "q3" in msg and "NUL" in msg


def test_unknown_language_code(tmp_path):
    folder = prompts_dir(tmp_path, EN)
    with pytest.raises(DataError, match="unknown language code 'xx'"):
        load_prompt_set(str(folder), ["en", "xx"])


def test_missing_language_file(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=ES)
    with pytest.raises(DataError) as err:
        load_prompt_set(str(folder), ["en", "es", "de"])
    assert "'de'" in str(err.value) and str(folder) in str(err.value)


def test_missing_english_file(tmp_path):
    folder = tmp_path / "noen"
    folder.mkdir()
    write_lines(folder / "es.jsonl", ES)
    with pytest.raises(DataError, match="'en'"):
        load_prompt_set(str(folder), ["es"])


def test_corrupt_json_line(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=ES)
    with open(folder / "es.jsonl", "a", encoding="utf-8") as f:
        f.write('{"instruction_id": "q4", "instruction": "¿rota?"\n')
    with pytest.raises(DataError) as err:
        load_prompt_set(str(folder), ["en", "es"])
    assert "es.jsonl:4" in str(err.value) and "JSON" in str(err.value)


def test_corrupt_json_file(tmp_path):
    folder = tmp_path / "badjson"
    folder.mkdir()
    (folder / "en.json").write_text('[{"id": 1, "instruction": "One"},')
    with pytest.raises(DataError, match=r"en\.json: invalid JSON"):
        load_prompt_set(str(folder), ["en"])
    (folder / "en.json").write_text('{"id": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        load_prompt_set(str(folder), ["en"])


def test_record_that_is_not_an_object_or_lacks_an_id(tmp_path):
    folder = prompts_dir(tmp_path, EN[:1] + [["not", "an", "object"]])
    with pytest.raises(DataError, match=r"en\.jsonl:line 2: expected a JSON object"):
        load_prompt_set(str(folder), ["en"])
    folder = prompts_dir(tmp_path, EN[:1] + [{"instruction": "no id here"}])
    with pytest.raises(DataError, match=r"en\.jsonl:line 2: missing or invalid id field 'instruction_id'"):
        load_prompt_set(str(folder), ["en"])
    folder = prompts_dir(tmp_path, [{"name": "x", "instruction": "What?"}])
    with pytest.raises(DataError, match="id_field"):
        load_prompt_set(str(folder), ["en"])


def test_empty_language_file(tmp_path):
    folder = prompts_dir(tmp_path, EN, es=[])
    with pytest.raises(DataError, match=r"es\.jsonl: no prompts"):
        load_prompt_set(str(folder), ["en", "es"])


def test_source_that_is_a_file_or_missing(tmp_path, monkeypatch):
    f = write_lines(tmp_path / "en.jsonl", EN)
    with pytest.raises(DataError, match="expected a folder"):
        resolve_prompt_source(str(f))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="Hub dataset"):
        resolve_prompt_source("no-such-user/no-such-dataset-icr")
    with pytest.raises(DataError, match="no embedded data"):
        resolve_prompt_source("embedded:nothing")


# ---------------------------------------------------------------- JSON Lines I/O


def test_read_jsonl_roundtrip_and_missing_file(tmp_path):
    recs = [{"id": "1", "text": "héllo"}, {"id": "2", "x": [1, 2]}]
    write_jsonl_atomic(tmp_path / "a.jsonl", recs)
    assert read_jsonl(tmp_path / "a.jsonl") == recs
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    with JsonlAppender(tmp_path / "sub" / "b.jsonl") as out:
        for r in recs:
            out.write(r)
    assert read_jsonl(tmp_path / "sub" / "b.jsonl") == recs
    write_json_atomic(tmp_path / "c.json", {"a": 1})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_truncated_last_line_repaired_only_with_repair(tmp_path):
    path = tmp_path / "out.jsonl"
    good = '{"id": "1"}\n{"id": "2"}\n'
    path.write_text(good + '{"id": "3", "resp', encoding="utf-8")
    with pytest.raises(DataError, match=r"out\.jsonl:3: corrupt JSON line \(truncated"):
        read_jsonl(path)
    assert path.read_text(encoding="utf-8").endswith('"resp')  # untouched without repair
    assert read_jsonl(path, repair=True) == [{"id": "1"}, {"id": "2"}]
    assert path.read_text(encoding="utf-8") == good  # truncated back to the last good line
    with JsonlAppender(path) as out:  # appending after the repair gives a valid file
        out.write({"id": "3"})
    assert [r["id"] for r in read_jsonl(path)] == ["1", "2", "3"]


def test_complete_last_line_without_newline(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "1"}\n{"id": "2"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"out\.jsonl:2: last line has no newline"):
        read_jsonl(path)
    assert read_jsonl(path, repair=True) == [{"id": "1"}, {"id": "2"}]
    assert path.read_text(encoding="utf-8") == '{"id": "1"}\n{"id": "2"}\n'


def test_corrupt_middle_line_is_an_error_even_with_repair(tmp_path):
    path = tmp_path / "out.jsonl"
    text = '{"id": "1"}\n{"id": \n{"id": "3"}\n'
    path.write_text(text, encoding="utf-8")
    for repair in (False, True):
        with pytest.raises(DataError, match=r"out\.jsonl:2: corrupt JSON line"):
            read_jsonl(path, repair=repair)
    assert path.read_text(encoding="utf-8") == text  # never "repaired" away
    path.write_text('{"id": "1"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"out\.jsonl:2: corrupt JSON line.*not a JSON object"):
        read_jsonl(path)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "1"}\n\n  \n{"id": "2"}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"id": "1"}, {"id": "2"}]
    path.write_text('{"id": "1"}\n\n{"id": "2"}\n{"id', encoding="utf-8")
    assert read_jsonl(path, repair=True) == [{"id": "1"}, {"id": "2"}]
    assert path.read_text(encoding="utf-8") == '{"id": "1"}\n\n{"id": "2"}\n'


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from icr.core.io import write_json_atomic

    umask = os.umask(0)
    os.umask(umask)
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask
