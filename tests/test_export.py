"""`icr export`: a run's pairs as a folder `datasets.load_dataset` reads (one config per language,
TRL's preference columns), and the trained model copied with a model card.

The Hub's own card check (`RepoCard.validate`) posts to the Hub, so it cannot run offline. What is
checked instead, offline: the README's YAML front matter parses with huggingface_hub's card parser
(`DatasetCard.load` / `ModelCard.load`, which build `DatasetCardData` / `ModelCardData` and, for a
model, parse the `model-index` eval results back into `EvalResult`s); the metadata survives a round
trip through those classes unchanged; and the fields the Hub reads (configs, language, base_model,
library_name) hold what the run had."""

from __future__ import annotations

import pytest

from helpers import two_iteration_config
from icr.config import ExportConfig
from icr.core.errors import DataError
from icr.core.io import read_jsonl, write_json_atomic
from icr.export import export
from icr.pipeline import run_stage


@pytest.fixture(scope="module")
def trained_run(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """Iteration 0 of the two-iteration tiny run, through training (π^1 saved)."""
    cfg = two_iteration_config(tmp_path_factory.mktemp("runs"), "exported", tiny_dir, tiny_ref_dir)
    for stage in ("generate", "reward", "pairs", "train"):
        run = run_stage(cfg, stage)
    return run.root


def test_exported_pairs_load_with_datasets_per_language(trained_run, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, DatasetCardData

    out, _ = export(ExportConfig(run_dir=str(trained_run), what="pairs", to=str(tmp_path / "pairs")))
    pairs = read_jsonl(trained_run / "iter_0" / "pairs.jsonl")
    for lang in ("en", "es"):
        loaded = load_dataset(str(out), lang, split="train")
        expected = [p for p in pairs if p["lang"] == lang]
        assert loaded.to_list() == expected and len(expected) > 0
        assert loaded[0]["chosen"][0]["role"] == "assistant" and loaded[0]["prompt"][0]["role"] == "user"
    card = DatasetCard.load(out / "README.md")
    assert isinstance(card.data, DatasetCardData)
    assert DatasetCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    meta = card.data.to_dict()
    assert meta["language"] == ["en", "es"]
    assert [c["config_name"] for c in meta["configs"]] == ["en", "es"]
    assert "length_control" in card.text and "crosslingual" in card.text  # the settings that made it


def test_exported_model_has_a_card_with_eval_results(trained_run, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import AutoModelForCausalLM

    results = tmp_path / "eval"
    write_json_atomic(
        results / "results.json",
        {"results": [{"model": "pi1", "lang": "es", "win_rate": 12.5, "lc_win_rate": 20.0, "n_pairs": 8}]},
    )
    config = ExportConfig(run_dir=str(trained_run), what="model", to=str(tmp_path / "model"), eval=str(results))
    out, url = export(config)
    assert url is None
    AutoModelForCausalLM.from_pretrained(out)  # a model folder still
    card = ModelCard.load(out / "README.md")
    assert isinstance(card.data, ModelCardData)
    assert ModelCardData(**card.data.to_dict()).to_dict() == card.data.to_dict()
    assert card.data.library_name == "transformers" and card.data.language == ["en", "es"]
    assert card.data.base_model is None  # a local folder is no Hub id
    values = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert values == {("es", "win_rate"): 12.5, ("es", "lc_win_rate"): 20.0}
    with pytest.raises(DataError, match="not empty"):
        export(config)


def test_the_train_stage_writes_the_models_card(trained_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained_run / "iter_0" / "model" / "README.md")
    pairs = read_jsonl(trained_run / "iter_0" / "pairs.jsonl")
    assert card.data.library_name == "transformers" and card.data.language == ["en", "es"]
    assert "trl" in card.data.tags and card.data.model_name == "exported-pi1"
    for lang in ("en", "es"):
        assert f"| {lang} | {sum(p['lang'] == lang for p in pairs)} |" in card.text
    assert "nll_weight" in card.text  # the training settings
