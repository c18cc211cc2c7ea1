"""Reading a config (`icr.config.base`): an unknown key names its file and line and the closest
field of its section; values keep pydantic's messages."""

from __future__ import annotations

import pytest

from icr.config import ConfigError, RunConfig, load_config
from icr.config.base import build_config, yaml_key_lines


def test_an_unknown_key_names_file_line_and_the_closest_field(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(
        "name: r\ngenerate:\n  n: 4\n  temprature: 0.5\nmodles:\n  policy: x\ntrain:\n  lora:\n    rnk: 8\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:4: generate.temprature: unknown key (did you mean 'temperature'?)" in message
    assert f"{path}:5: modles: unknown key (did you mean 'models'?)" in message
    assert f"{path}:9: train.lora.rnk: unknown key (did you mean 'r'?)" not in message  # too far: no guess
    assert f"{path}:9: train.lora.rnk: unknown key" in message


def test_a_bad_value_keeps_its_message_and_a_flag_has_no_line(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("generate:\n  n: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: generate.n: Input should be greater than or equal to 2"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"\n  generate.tempreature: unknown key \(did you mean 'temperature'\?\)"):
        build_config(RunConfig, None, {"generate.tempreature": 1})


def test_key_lines_follow_nesting_and_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  b: 1\nc:\n  - d: 2\n    e: 3\n")
    assert yaml_key_lines(path) == {("a",): 1, ("a", "b"): 2, ("c",): 3, ("c", 0, "d"): 4, ("c", 0, "e"): 5}
    assert yaml_key_lines(None) == {}
