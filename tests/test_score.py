"""`icr score`: the rewards of a dataset's responses, equal to those the run's reward stage wrote;
resumable; TRL row formats from JSON Lines and Parquet; clear errors before any model loads."""

from __future__ import annotations

import pytest

from helpers import run_config
from icr.config import ModelsConfig, ScoreConfig
from icr.core.errors import DataError
from icr.core.io import read_jsonl
from icr.pipeline import run_stage
from icr.score import read_score_items, score_file


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """generate → reward → pairs of the tests' tiny one-iteration run (en, es)."""
    cfg = run_config(tmp_path_factory.mktemp("runs"), tiny_dir, tiny_ref_dir, "scored")
    for stage in ("generate", "reward", "pairs"):
        run = run_stage(cfg, stage)
    return cfg, run.root


def score_config(cfg, source, output, **fields) -> ScoreConfig:
    models = ModelsConfig(policy=cfg.models.policy, reference=cfg.models.reference, device="cpu", dtype="float32")
    return ScoreConfig(models=models, pairs=str(source), output=str(output), **fields)


def run_rewards(root) -> dict[tuple[str, str, str], tuple[float, float, float, int]]:
    """(lang, id, response) → (reward, logp_policy, logp_ref, scored_tokens) from the run's reward files."""
    out = {}
    for path in sorted((root / "iter_0" / "rewards").glob("*.jsonl")):
        for r in read_jsonl(path):
            for k, text in enumerate(r["responses"]):
                values = (r["reward"][k], r["logp_policy"][k], r["logp_ref"][k], r["scored_tokens"][k])
                out[(r["lang"], r["id"], text)] = values
    return out


def test_scores_of_the_runs_pairs_equal_its_reward_files(tiny_run, tmp_path):
    cfg, root = tiny_run
    pairs = read_jsonl(root / "iter_0" / "pairs.jsonl")
    assert {p["lang"] for p in pairs} == {"en", "es"}
    records = score_file(score_config(cfg, root / "iter_0" / "pairs.jsonl", tmp_path / "scores.jsonl"))
    expected = run_rewards(root)
    assert len(records) == len(pairs)
    for pair, record in zip(pairs, records):
        assert record["lang"] == pair["lang"] and record["mode"] == "crosslingual"
        assert record["responses"] == [pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]]
        for k, text in enumerate(record["responses"]):
            reward, logp, logp_ref, n_tokens = expected[(pair["lang"], pair["id"], text)]
            assert record["scored_tokens"][k] == n_tokens
            assert record["logp_policy"][k] == pytest.approx(logp, abs=1e-4)
            assert record["logp_ref"][k] == pytest.approx(logp_ref, abs=1e-4)
            assert record["reward"][k] == pytest.approx(reward, abs=1e-5)


def test_a_resumed_score_file_is_the_uninterrupted_one(tiny_run, tmp_path):
    cfg, root = tiny_run
    source = root / "iter_0" / "pairs.jsonl"
    whole = tmp_path / "whole.jsonl"
    score_file(score_config(cfg, source, whole, **{"reward": {"batch_prompts": 2}}))
    lines = whole.read_bytes().splitlines(keepends=True)
    assert len(lines) > 2
    partial = tmp_path / "partial.jsonl"
    partial.write_bytes(b"".join(lines[:2]) + lines[2][:10])  # two whole records and a torn third line
    score_file(score_config(cfg, source, partial, **{"reward": {"batch_prompts": 2}}))
    assert partial.read_bytes() == whole.read_bytes()


def test_completions_from_parquet_with_conversational_prompts_and_a_given_language(tiny_run, tmp_path):
    pd = pytest.importorskip("pandas")
    cfg, _ = tiny_run
    rows = [
        {"prompt": [{"role": "user", "content": text}], "completion": [{"role": "assistant", "content": answer}]}
        for text, answer in (("Nombra un color.", "Azul."), ("Di hola.", "Hola."))
    ]
    for row, english in zip(rows, ("Name a colour.", "Say hello.")):
        row["prompt_en"] = english
    source = tmp_path / "completions.parquet"
    pd.DataFrame(rows).to_parquet(source)
    config = ScoreConfig(
        models=ModelsConfig(policy=cfg.models.policy, reference=cfg.models.reference, device="cpu", dtype="float32"),
        responses=str(source),
        language="es",
        output=str(tmp_path / "out.jsonl"),
    )
    items = read_score_items(config)
    assert [(i.id, i.lang, i.prompt, i.responses) for i in items] == [
        ("0", "es", "Nombra un color.", ["Azul."]),
        ("1", "es", "Di hola.", ["Hola."]),
    ]
    records = score_file(config)
    assert [len(r["reward"]) for r in records] == [1, 1]
    assert "Spanish" in records[0]["reward_prompt"] and "Name a colour." in records[0]["reward_prompt"]


def test_bad_columns_and_a_missing_english_instruction_are_data_errors(tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text('{"prompt": "Hola", "chosen": "a", "rejected": "b", "lang": "es"}\n')
    with pytest.raises(DataError, match="needs|English instruction"):
        score_file(ScoreConfig(pairs=str(source), output=str(tmp_path / "o.jsonl")))
    with pytest.raises(DataError, match=r"no column 'completion'.*columns: prompt, chosen, rejected, lang"):
        read_score_items(ScoreConfig(responses=str(source), output=str(tmp_path / "o.jsonl")))
    with pytest.raises(DataError, match="no column 'language'"):
        read_score_items(ScoreConfig(pairs=str(source), language_field="language", output=str(tmp_path / "o.jsonl")))
    with pytest.raises(ValueError, match="exactly one of pairs or responses"):
        ScoreConfig(output="o.jsonl")


def test_the_command_line_scores_and_reward_accuracy_takes_the_models_settings(tiny_run, tmp_path):
    from click.testing import CliRunner

    from icr.cli import main

    cfg, root = tiny_run
    out = tmp_path / "cli.jsonl"
    flags = ["--policy", cfg.models.policy, "--reference", cfg.models.reference, "--device", "cpu"]
    flags += ["--dtype", "float32", "--pairs", str(root / "iter_0" / "pairs.jsonl"), "--output", str(out)]
    result = CliRunner().invoke(main, ["score", *flags])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out)) == len(read_jsonl(root / "iter_0" / "pairs.jsonl"))
    help_text = CliRunner().invoke(main, ["reward-accuracy", "--help"]).output
    assert "--dtype" in help_text and "--policy" in help_text and "--models.policy" not in help_text
