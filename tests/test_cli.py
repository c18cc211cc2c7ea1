"""The command line: every config field is a flag, values parse as YAML scalars or lists."""

from __future__ import annotations

import logging
import re

import pytest
import yaml
from click.testing import CliRunner

from icr.cli import main
from icr.cli.options import parse_value, resolve
from icr.config import RunConfig, iter_fields


@pytest.fixture(autouse=True)
def _restore_logging():
    """`icr` configures the root logger (force=True); give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def config_yaml(*args: str) -> dict:
    result = invoke("config", *args)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_config_prints_the_resolved_yaml():
    tree = config_yaml()
    assert tree["generate"]["n"] == 10 and tree["reward"]["mode"] == "crosslingual"
    assert set(tree) >= {"models", "data", "generate", "reward", "pairs", "train"}


def test_a_mapping_flag_reads_yaml_and_is_checked():
    tree = config_yaml("--train.trl_args", "{max_grad_norm: 0.5, optim: adafactor}")
    assert tree["train"]["trl_args"] == {"max_grad_norm": 0.5, "optim": "adafactor"}
    refused = invoke("config", "--train.trl_args", "{beta: 0.5}")
    assert refused.exit_code == 2 and "use train.beta" in refused.output


def test_flags_parse():
    tree = config_yaml(
        "--generate.n",
        "4",
        "--data.languages",
        "en,es",
        "--pairs.max_chosen_score",
        "null",
        "--reward.beta",
        "1e-2",
        "--pairs.length_control",
        "false",
        "--train.lora.enabled",
        "true",
        "--name",
        "2024",
    )
    assert tree["generate"]["n"] == 4
    assert tree["data"]["languages"] == ["en", "es"]
    assert tree["pairs"]["max_chosen_score"] is None
    assert tree["reward"]["beta"] == 0.01
    assert tree["pairs"]["length_control"] is False and tree["train"]["lora"]["enabled"] is True
    assert tree["name"] == "2024"  # a str field stays a string


def test_max_chosen_score_number_then_null(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pairs:\n  max_chosen_score: 2.5\ngenerate:\n  n: 3\n")
    assert config_yaml("--config", str(path))["pairs"]["max_chosen_score"] == 2.5
    tree = config_yaml("--config", str(path), "--pairs.max_chosen_score", "null")
    assert tree["pairs"]["max_chosen_score"] is None and tree["generate"]["n"] == 3  # file kept, flag wins


def test_yaml_list_syntax_and_single_language():
    assert config_yaml("--data.languages", "[en, de]")["data"]["languages"] == ["en", "de"]
    assert config_yaml("--data.languages", "en")["data"]["languages"] == ["en"]
    assert config_yaml("--data.languages", "en, fr ,ru")["data"]["languages"] == ["en", "fr", "ru"]


def test_invalid_values_are_usage_errors_naming_the_field():
    result = CliRunner().invoke(main, ["config", "--generate.n", "1"])
    assert result.exit_code == 2 and "generate.n" in result.output
    result = CliRunner().invoke(main, ["config", "--data.languages", "en,xx"])
    assert result.exit_code == 2 and "data.languages" in result.output and "xx" in result.output
    result = CliRunner().invoke(main, ["config", "--generate.bogus", "1"])
    assert result.exit_code == 2 and "bogus" in result.output


@pytest.mark.parametrize("name", ["a/b", "..", "../up"])
def test_run_name_with_slash_or_dotdot_refused(name):
    result = CliRunner().invoke(main, ["config", "--name", name])
    assert result.exit_code == 2 and "name" in result.output


def test_every_config_field_is_a_flag():
    help_text = invoke("config", "--help").output
    for dotted, _, _ in iter_fields(RunConfig):
        assert f"--{dotted}" in help_text


def test_stage_commands_exist():
    out = invoke("--help").output
    for command in ("generate", "reward", "pairs", "train", "run", "config", "align-english", "reward-accuracy"):
        assert command in out


def test_stage_command_validates_before_running(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--output_dir", str(tmp_path), "--reward.beta", "-1"])
    assert result.exit_code == 2 and "reward.beta" in result.output
    assert not any(tmp_path.iterdir())  # nothing was created


def test_parse_value_rules():
    assert parse_value("4", int) == 4
    assert parse_value("null", float | None) is None
    assert parse_value("a,b", list[str]) == ["a", "b"]
    assert parse_value("yes", str) == "yes"
    assert parse_value("0.5", float) == 0.5


def test_resolve_config_ignores_unset_flags():
    cfg = resolve(RunConfig, None, {"generate__n": None, "generate__temperature": "0.5"})
    assert cfg.generate.n == 10 and cfg.generate.temperature == 0.5


def test_norwegian_language_code_is_not_read_as_a_yaml_boolean():
    """'no' is ISO 639-1 Norwegian; YAML 1.1 reads a bare `no` as false."""
    assert config_yaml("--data.languages", "en,no")["data"]["languages"] == ["en", "no"]
    assert config_yaml("--data.languages", "no", "--reward.mode", "multilingual")["data"]["languages"] == ["no"]


def test_string_flags_are_taken_verbatim():
    """A string field's value is text, not YAML: templates with ':' or brackets, numeric-looking ids."""
    template = "{instruction}\n\nAnswer in {language}: please"
    assert config_yaml("--reward.crosslingual_template", template)["reward"]["crosslingual_template"] == template
    template = "{instruction} [in {language}]"
    assert config_yaml("--reward.crosslingual_template", template)["reward"]["crosslingual_template"] == template
    assert config_yaml("--data.id_field", "42")["data"]["id_field"] == "42"
    assert config_yaml("--models.translator", "null")["models"]["translator"] is None


def test_lora_all_linear_stays_the_peft_shorthand():
    """PEFT expands target_modules='all-linear' only when it is a string, not ['all-linear']."""
    assert config_yaml("--train.lora.target_modules", "all-linear")["train"]["lora"]["target_modules"] == "all-linear"
    assert config_yaml("--train.lora.target_modules", "q_proj,v_proj")["train"]["lora"]["target_modules"] == [
        "q_proj",
        "v_proj",
    ]


def test_project_errors_are_one_clean_line_in_every_command(tmp_path):
    """Prompts that lack a language in `icr run` (no Italian demo prompts: a config error, found before
    the run starts) and a missing pairs folder in `icr reward-accuracy` (a data error): exit codes
    2 and 1 with a message, no traceback, nothing loaded."""
    result = CliRunner().invoke(main, ["run", "--output_dir", str(tmp_path), "--data.languages", "en,it"])
    assert result.exit_code == 2 and "Error:" in result.output and "'it'" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(
        main, ["reward-accuracy", "--pairs", str(tmp_path / "none"), "--policy", "p", "--reference", "r"]
    )
    assert result.exit_code == 1 and "no preference pairs" in result.output


def test_small_commands_have_only_their_own_flags():
    align = invoke("align-english", "--help").output
    assert "--train.beta" in align and "--generate.n" not in align and "--models.policy" not in align
    accuracy = invoke("reward-accuracy", "--help").output
    assert "--reward.beta" in accuracy and "--beta " not in accuracy and "--reward.mode" not in accuracy
    result = CliRunner().invoke(
        main, ["reward-accuracy", "--pairs", "x", "--policy", "p", "--reference", "r", "--modes", "crosslingual,bogus"]
    )
    assert result.exit_code == 2 and "modes" in result.output


def _option_lines(help_text: str) -> dict[str, str]:
    """Flag -> the rest of its first help line (`--generate.n INTEGER  Responses ... [default: 10]`,
    wrapped text joined up to the next flag)."""
    options: dict[str, str] = {}
    flag = None
    for line in help_text.splitlines():
        match = re.match(r"^  (--[\w.-]+)(.*)$", line)
        if match:
            flag = match.group(1)
            options[flag] = match.group(2).strip()
        elif flag and line.startswith("    "):
            options[flag] += " " + line.strip()
        elif not line.strip():
            flag = None
    return options


def test_help_shows_types_and_plain_defaults():
    options = _option_lines(invoke("run", "--help").output)
    assert options["--generate.temperature"].startswith("FLOAT ")
    assert "[default: 0.9]" in options["--generate.temperature"]
    assert options["--generate.n"].startswith("INTEGER ") and "[default: 10]" in options["--generate.n"]
    assert options["--reward.mode"].startswith("[crosslingual|multilingual|translate]")
    assert options["--data.prompts"].startswith("PATH ") and "[default: embedded:demo]" in options["--data.prompts"]
    assert options["--output_dir"].startswith("PATH ") and options["--config"].startswith("PATH ")
    assert options["--train.trl_args"].startswith("MAPPING ")
    assert options["--models.device_map"].startswith("[auto|balanced|null]")
    assert "[default: en,es,de,fr,ru]" in options["--data.languages"]
    assert "[default: true]" in options["--pairs.length_control"]
    help_text = invoke("run", "--help").output + invoke("eval", "--help").output
    assert "VALUE" not in help_text and "[default: None]" not in help_text
    assert not re.search(r"\[default: '[^' ]*'\]", " ".join(help_text.split()))  # a repr, not a value
    assert "[default: [" not in help_text and "[default: True]" not in help_text


def test_stage_help_lists_its_own_section_and_points_to_the_shared_options():
    result = invoke("generate", "--help")
    options = _option_lines(result.output)
    assert "--generate.n" in options and "--iteration" in options and "--config" in options
    assert not any(flag.startswith(("--reward.", "--train.", "--models.", "--data.")) for flag in options)
    assert "icr run --help" in " ".join(result.output.split())
    assert len(result.output.splitlines()) < 80
    assert "--train.beta" in _option_lines(invoke("train", "--help").output)
    # the hidden options are still accepted
    result = CliRunner().invoke(main, ["generate", "--models.policy", "p", "--reward.beta", "-1"])
    assert result.exit_code == 2 and "reward.beta" in result.output


def test_top_help_groups_the_commands():
    text = invoke("--help").output
    titles = re.findall(r"^(\w+) commands:$", text, re.M)
    assert titles == ["Run", "Stage", "Evaluate", "Inspect"]
    sections = dict(zip(titles, re.split(r"^\w+ commands:$", text, flags=re.M)[1:]))
    assert re.search(r"^  generate ", sections["Stage"], re.M) and re.search(r"^  eval ", sections["Evaluate"], re.M)
    assert re.search(r"^  status ", sections["Inspect"], re.M) and re.search(r"^  run ", sections["Run"], re.M)
    listed = re.findall(r"^  ([a-z][\w-]*) ", "".join(sections.values()), re.M)
    assert sorted(listed) == sorted(main.commands)


def test_cli_md_is_what_the_generator_writes():
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_cli_docs", repo / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (repo / "docs" / "cli.md").read_text(encoding="utf-8") == module.main_doc() + "\n"


def test_a_command_invoked_on_its_own_still_takes_dash_h():
    """click keeps the help option a command first built: invoked without `icr` in front (as tests
    and embedding scripts do), a command must still offer -h, or docs/cli.md depends on test order."""
    from click.testing import CliRunner

    for name in ("eval", "score", "status"):
        out = CliRunner().invoke(main.commands[name], ["-h"], prog_name=f"icr {name}")
        assert out.exit_code == 0, out.output
        assert "-h, --help" in out.output
