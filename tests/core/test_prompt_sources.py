"""Prompts from tables: one Parquet or CSV file with a language column, a folder laid out as a Hub
dataset read by `datasets` (per-language configs, or one config with a language column), and
wrong column names reported with the columns the table has."""

from __future__ import annotations

import pytest

from icr.config import load_config
from icr.core.errors import DataError
from icr.core.prompts import PromptSource, load_prompt_set
from icr.core.tables import load_table

ROWS = [
    {"key": "1", "lang": "en", "question": "Name a fruit."},
    {"key": "2", "lang": "en", "question": "Say hello."},
    {"key": "2", "lang": "es", "question": "Di hola."},
    {"key": "1", "lang": "es", "question": "Nombra una fruta."},
    {"key": "1", "lang": "de", "question": "Nenne eine Frucht."},
]


def texts(prompts) -> dict[str, list[tuple[str, str]]]:
    return {lang: [(p.id, p.text) for p in ps] for lang, ps in prompts.by_lang.items()}


EXPECTED = {
    "en": [("1", "Name a fruit."), ("2", "Say hello.")],
    "es": [("1", "Nombra una fruta."), ("2", "Di hola.")],  # in English order, not file order
}


def test_one_parquet_table_with_a_language_column(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "prompts.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    prompts = load_prompt_set(PromptSource(str(path), id_field="key", text_field="question"), ["en", "es"])
    assert texts(prompts) == EXPECTED
    assert prompts.english == {"1": "Name a fruit.", "2": "Say hello."}


def test_csv_keeps_ids_as_written_and_takes_another_language_column(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('id,language,instruction\n007,en,"Hi, you"\n007,es,Hola\n', encoding="utf-8")
    assert load_table(path)[0] == {"id": "007", "language": "en", "instruction": "Hi, you"}
    prompts = load_prompt_set(PromptSource(str(path), language_field="language"), ["es"])
    assert texts(prompts) == {"es": [("007", "Hola")]} and prompts.english == {"007": "Hi, you"}


def hub_folder(tmp_path, card: str, files: dict[str, list[dict]]):
    pd = pytest.importorskip("pandas")
    root = tmp_path / "org--prompts"
    (root / "data").mkdir(parents=True)
    for name, rows in files.items():
        pd.DataFrame(rows).to_parquet(root / "data" / name)
    (root / "README.md").write_text(f"---\n{card}---\n# Prompts\n", encoding="utf-8")
    return root


def test_a_hub_dataset_folder_with_one_config_per_language(tmp_path):
    entry = "- config_name: {0}\n  data_files:\n  - split: train\n    path: data/{0}.parquet\n"
    card = "".join(entry.format(lang) for lang in ("en", "es"))
    per_lang = {f"{lang}.parquet": [r for r in ROWS if r["lang"] == lang] for lang in ("en", "es")}
    root = hub_folder(tmp_path, "configs:\n" + card, per_lang)
    prompts = load_prompt_set(PromptSource(str(root), id_field="key", text_field="question"), ["en", "es"])
    assert texts(prompts) == EXPECTED


def test_a_hub_dataset_folder_with_a_named_config_split_and_language_column(tmp_path):
    card = (
        "configs:\n- config_name: all\n  data_files:\n  - split: test\n    path: data/all.parquet\n"
        "- config_name: other\n  data_files:\n  - split: test\n    path: data/other.parquet\n"
    )
    root = hub_folder(tmp_path, card, {"all.parquet": ROWS, "other.parquet": ROWS[:1]})
    config = load_config(
        overrides={
            "data.prompts": str(root),
            "data.config": "all",
            "data.split": "test",
            "data.language_field": "lang",
            "data.id_field": "key",
            "data.text_field": "question",
            "data.languages": ["en", "es"],
        }
    )
    from icr.runtime.preflight import load_prompts

    assert texts(load_prompts(config)) == EXPECTED
    with pytest.raises(DataError, match="split='nope'"):
        load_prompt_set(PromptSource(str(root), split="nope", config="all", language_field="lang"), ["en"])


def test_wrong_column_names_list_the_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "prompts.parquet"
    pd.DataFrame(ROWS).to_parquet(path)
    with pytest.raises(DataError, match=r"no column 'instruction' \(set data.text_field\); its columns: key, lang"):
        load_prompt_set(PromptSource(str(path), id_field="key"), ["en"])
    with pytest.raises(DataError, match=r"no column 'language' \(set data.language_field\)"):
        load_prompt_set(PromptSource(str(path), language_field="language"), ["en"])
    with pytest.raises(DataError, match=r"no column 'qid' \(set data.id_field\)"):
        load_prompt_set(PromptSource(str(path), id_field="qid", text_field="question"), ["en"])
    with pytest.raises(DataError, match=r"no prompts for language\(s\) fr in column 'lang' \(it holds de, en, es\)"):
        load_prompt_set(PromptSource(str(path), id_field="key", text_field="question"), ["fr"])
