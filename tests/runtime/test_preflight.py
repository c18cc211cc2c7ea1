"""Checks before a run starts (`icr.runtime.preflight`): a wrong model or prompt source is one
sentence naming the field, exit code 2, and no run folder; prompts are read once, up front."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from helpers import EMBEDDED, run_config
from icr.cli import main
from icr.config import ConfigError
from icr.pipeline import run_iterations
from icr.runtime import preflight
from icr.runtime.preflight import check_run, model_problem, prompts_problem


def test_a_missing_prompts_folder_fails_before_the_run_folder_exists(tmp_path):
    config = run_config(tmp_path, EMBEDDED, EMBEDDED, **{"data.prompts": str(tmp_path / "no-such")})
    with pytest.raises(ConfigError, match=r"data.prompts=.*no-such' does not exist: give a folder"):
        run_iterations(config)
    assert not config.run_dir.exists()


def test_a_missing_language_file_is_a_config_error_naming_the_source(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "en.jsonl").write_text('{"id": "1", "instruction": "Hi"}\n')
    config = run_config(tmp_path, EMBEDDED, EMBEDDED, **{"data.prompts": str(folder)})
    with pytest.raises(ConfigError, match=r"data.prompts=.*no prompts for language 'es'"):
        check_run(config)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/model", "does not exist"),
        ("runs/x/iter_0/model", "does not exist"),
        ("not a valid id!", "neither an existing path nor a valid Hub id"),
        ("embedded:nope", "unknown embedded model"),
    ],
)
def test_model_specs_that_cannot_load_are_named(spec, message):
    assert message in model_problem("models.policy", spec)
    assert model_problem("models.policy", spec).startswith(f"models.policy={spec!r}")


def test_existing_models_and_sources_pass(tiny_dir, tmp_path):
    assert model_problem("models.policy", str(tiny_dir)) is None
    assert model_problem("models.policy", EMBEDDED) is None
    assert "without config.json" in model_problem("models.policy", str(tmp_path))
    assert prompts_problem("embedded:demo") is None and prompts_problem(str(tmp_path)) is None


def test_an_uncached_hub_id_offline_says_so_and_online_passes(monkeypatch):
    monkeypatch.setattr(preflight, "offline", lambda: True)
    problem = model_problem("models.reference", "someone-unknown/no-such-model-here")
    assert "HF_HUB_OFFLINE is set" in problem and "not in the local cache" in problem
    assert "Hub dataset" in prompts_problem("someone-unknown/no-such-prompts")
    monkeypatch.setattr(preflight, "offline", lambda: False)
    assert model_problem("models.reference", "someone-unknown/no-such-model-here") is None


def test_every_problem_is_listed_and_same_policy_and_reference_warns(tmp_path, caplog):
    bad = run_config(tmp_path, "/no/policy", "/no/reference", **{"data.prompts": "/no/prompts"})
    with pytest.raises(ConfigError) as err:
        check_run(bad)
    assert all(f in str(err.value) for f in ("models.policy=", "models.reference=", "data.prompts="))
    with caplog.at_level(logging.WARNING, logger="icr.runtime.preflight"):
        prompts = check_run(run_config(tmp_path, EMBEDDED, EMBEDDED))
    assert any("same model" in r.getMessage() for r in caplog.records)
    (only,) = prompts.values()
    assert only.languages == ["en", "es"] and len(only.english) == 3  # 3 prompts in each language


def test_cli_run_and_config_exit_2_with_one_line_and_no_run_folder(tmp_path):
    runner = CliRunner()
    args = ["--data.prompts", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "runs")]
    result = runner.invoke(main, ["run", *args])
    assert result.exit_code == 2 and "data.prompts=" in result.output and "does not exist" in result.output
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(main, ["config", "--models.policy", str(tmp_path / "no-model")])
    assert result.exit_code == 2 and "models.policy=" in result.output
