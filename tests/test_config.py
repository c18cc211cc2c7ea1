"""Config validation: errors name the field, YAML + dotted overrides, checks before any model loads."""

from __future__ import annotations

import json

import pytest
import yaml

import icr.core.models
import icr.pipeline
import icr.runtime.rundir
from icr.config import ConfigError, RunConfig, dump_config, iter_fields, load_config, set_dotted


def test_defaults_follow_the_paper():
    cfg = load_config()
    assert cfg.generate.n == 10 and cfg.generate.temperature == 0.9 and cfg.generate.top_p == 1.0
    assert cfg.iterations == 2 and cfg.reward.mode == "crosslingual"
    assert cfg.pairs.length_control and cfg.pairs.alpha_max == 1.0
    assert cfg.data.languages[0] == "en"


def test_unknown_key_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"generate\.temprature"):
        load_config(overrides={"generate.temprature": 0.5})
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  bta: 0.2\n")
    with pytest.raises(ConfigError, match=r"reward\.bta"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"bogus"):
        load_config(overrides={"bogus": 1})


@pytest.mark.parametrize(
    "dotted,value,field",
    [
        ("reward.beta", 0, "reward.beta"),
        ("reward.beta", -0.1, "reward.beta"),
        ("train.beta", 0.0, "train.beta"),
        ("generate.n", 1, "generate.n"),
        ("generate.temperature", 0, "generate.temperature"),
        ("generate.top_p", 1.5, "generate.top_p"),
        ("data.limit", 0, "data.limit"),
        ("data.languages", ["en", "xx"], "data.languages"),
        ("data.languages", ["en", "en"], "data.languages"),
        ("data.languages", [], "data.languages"),
        ("reward.mode", "magic", "reward.mode"),
        ("iterations", 0, "iterations"),
    ],
)
def test_impossible_values_name_the_field(dotted, value, field):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={dotted: value})
    assert f"  {field}:" in str(err.value)


def test_unknown_language_error_lists_the_code():
    with pytest.raises(ConfigError, match="'xx'"):
        load_config(overrides={"data.languages": ["en", "xx"]})


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"generate.n": 1, "reward.beta": 0, "pairs.min_margin": -1})
    for field in ("generate.n", "reward.beta", "pairs.min_margin"):
        assert field in str(err.value)


def test_english_required_unless_multilingual():
    with pytest.raises(ConfigError, match="'en'"):
        load_config(overrides={"data.languages": ["es", "de"]})
    cfg = load_config(overrides={"data.languages": ["es", "de"], "reward.mode": "multilingual"})
    assert cfg.data.languages == ["es", "de"]


@pytest.mark.parametrize("name", ["a/b", "..", ".", "../x", "a\\b", ""])
def test_unsafe_run_names_refused(name):
    with pytest.raises(ConfigError, match="name"):
        load_config(overrides={"name": name})


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "exp1",
                "generate": {"n": 4, "temperature": 0.7},
                "data": {"languages": ["en", "es"]},
                "train": {"lora": {"r": 8}},
            }
        )
    )
    cfg = load_config(path, {"generate.n": 6, "train.lora.enabled": True, "pairs.max_chosen_score": None})
    assert cfg.name == "exp1"
    assert cfg.generate.n == 6 and cfg.generate.temperature == 0.7  # override wins, file kept otherwise
    assert cfg.data.languages == ["en", "es"]
    assert cfg.train.lora.r == 8 and cfg.train.lora.enabled is True
    assert cfg.pairs.max_chosen_score is None
    assert cfg.reward.beta == 0.1  # untouched default
    assert cfg.run_dir.name == "exp1"


def test_dump_config_roundtrips(tmp_path):
    cfg = load_config(overrides={"generate.n": 3, "data.languages": ["en", "ru"], "reward.mode": "translate"})
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg), encoding="utf-8")
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["generate"]["n"] == 3


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == RunConfig()


def test_set_dotted_refuses_a_value_as_section():
    tree = {"seed": 3}
    with pytest.raises(ConfigError, match="seed is not a section"):
        set_dotted(tree, "seed.x", 1)
    tree = {}
    set_dotted(tree, "a.b.c", 1)
    assert tree == {"a": {"b": {"c": 1}}}


def test_validate_assignment():
    cfg = RunConfig()
    with pytest.raises(ValueError):
        cfg.generate.n = 1


def test_section_hash_changes_only_with_its_sections():
    a = load_config()
    b = load_config(overrides={"pairs.min_margin": 0.5})
    c = load_config(overrides={"seed": 1})
    assert a.section_hash("seed", "generate") == b.section_hash("seed", "generate")
    assert a.section_hash("pairs") != b.section_hash("pairs")
    assert a.section_hash("seed", "generate") != c.section_hash("seed", "generate")
    assert a.section_hash("generate") == load_config(overrides={"name": "other"}).section_hash("generate")


def test_iter_fields_covers_nested_leaves():
    names = {d for d, _, _ in iter_fields(RunConfig)}
    assert {"generate.n", "train.lora.r", "data.languages", "name", "reward.crosslingual_template"} <= names
    assert "train.lora" not in names and "generate" not in names


# ---------------------------------------------------------------- checks before any model loads


def _forbid_model_loading(monkeypatch):
    calls = []

    def boom(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded before the config/data were checked")

    monkeypatch.setattr(icr.core.models, "load_model", boom)
    return calls


def test_language_without_prompts_fails_before_any_model_loads(tmp_path, monkeypatch):
    calls = _forbid_model_loading(monkeypatch)
    cfg = load_config(
        overrides={"output_dir": str(tmp_path), "data.prompts": "embedded:demo", "data.languages": ["en", "es", "it"]}
    )  # the demo has no Italian prompts
    with pytest.raises(ConfigError, match="data.prompts='embedded:demo'.*'it'"):
        icr.pipeline.run_stage(cfg, "generate")
    with pytest.raises(ConfigError, match="'it'"):
        icr.pipeline.run_iterations(cfg)
    assert not cfg.run_dir.exists()
    assert calls == []


def test_missing_prompt_folder_fails_before_any_model_loads(tmp_path, monkeypatch):
    calls = _forbid_model_loading(monkeypatch)
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "en.jsonl").write_text(json.dumps({"id": "1", "instruction": "Hi"}) + "\n")
    cfg = load_config(
        overrides={"output_dir": str(tmp_path / "runs"), "data.prompts": str(folder), "data.languages": ["en", "fr"]}
    )
    with pytest.raises(ConfigError, match="'fr'"):
        icr.pipeline.run_stage(cfg, "generate")
    assert calls == []


def test_later_stage_needs_earlier_ones(tmp_path, monkeypatch):
    calls = _forbid_model_loading(monkeypatch)
    cfg = load_config(overrides={"output_dir": str(tmp_path), "data.languages": ["en", "es"]})
    with pytest.raises(ConfigError, match="iter_0/generate first"):
        icr.pipeline.run_stage(cfg, "reward")
    with pytest.raises(ConfigError, match="iteration 0"):
        icr.pipeline.run_stage(cfg, "generate", iteration=1)
    assert calls == []


@pytest.mark.parametrize("template", ["{instruction} in {lang}", "Please answer only in {language}.", "{0} {language}"])
def test_crosslingual_template_is_checked_before_any_run(template):
    """A template with an unknown placeholder fails only at the reward stage (KeyError, hours into a
    run), and one without {instruction} silently scores every response without its instruction."""
    with pytest.raises(ConfigError, match=r"reward\.crosslingual_template"):
        load_config(overrides={"reward.crosslingual_template": template})


def test_valid_crosslingual_template_accepted():
    cfg = load_config(overrides={"reward.crosslingual_template": "{instruction}\n(Respond in {language}.)"})
    assert cfg.reward.crosslingual_template.format(instruction="Hi", language="German") == "Hi\n(Respond in German.)"


def test_literal_choices_are_the_registries():
    """Config `Literal`s give the CLI its choices; each must be exactly the keys of its registry."""
    from typing import get_args

    from icr.config.base import JudgeBackend, JudgeOrder, LanguageFilter, RewardMode, SamplingBackend, ScoreTokens
    from icr.engines.rewarding import STRATEGIES
    from icr.engines.sampling import BACKENDS
    from icr.engines.scoring.responses import SCORED_TOKENS
    from icr.engines.selection import LANGUAGE_FILTERS
    from icr.eval.judges import JUDGES
    from icr.eval.judging import ORDERS

    for literal, registry in (
        (SamplingBackend, BACKENDS),
        (RewardMode, STRATEGIES),
        (JudgeBackend, JUDGES),
        (JudgeOrder, ORDERS),
        (ScoreTokens, SCORED_TOKENS),
        (LanguageFilter, LANGUAGE_FILTERS),
    ):
        assert list(get_args(literal)) == list(registry)


def test_stage_registry_declares_growing_sections_ending_with_the_run_hash():
    from icr.config.run import RUN_SECTIONS
    from icr.stages import STAGES

    assert list(STAGES) == ["generate", "reward", "pairs", "train"]
    sections = [stage.sections for stage in STAGES.values()]
    assert all(set(a) < set(b) for a, b in zip(sections, sections[1:])) and sections[-1] == RUN_SECTIONS


def test_eval_sampling_keeps_the_paper_decoding_for_fields_not_given():
    from icr.config import EvalConfig

    default = EvalConfig(prompts="p", output="o").sampling
    assert (default.temperature, default.top_p, default.max_new_tokens) == (0.6, 0.9, 2048)
    partly = EvalConfig(prompts="p", output="o", sampling={"max_new_tokens": 8}).sampling
    assert (partly.temperature, partly.top_p, partly.max_new_tokens) == (0.6, 0.9, 8)


@pytest.mark.parametrize(
    "text, setting",
    [("off", "off"), ('"off"', "off"), ("chosen", "chosen"), ("all", "all"), ("false", "off"), ("true", "all")],
)
def test_language_filter_reads_yaml_off_and_old_booleans(tmp_path, text, setting):
    """YAML reads an unquoted `off` as false; old configs said true (= drop off-language = 'all')."""
    path = tmp_path / "c.yaml"
    path.write_text(f"pairs:\n  language_filter: {text}\n")
    assert load_config(path).pairs.language_filter == setting


def test_language_filter_rejects_other_values():
    with pytest.raises(ConfigError, match=r"pairs\.language_filter"):
        load_config(overrides={"pairs.language_filter": "rejected"})
