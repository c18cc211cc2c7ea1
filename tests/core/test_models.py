"""Model specs, loading safety, chat templates and the exchange tokenization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from icr.core.chat import (
    PLAIN_CHAT_TEMPLATE,
    common_prefix_length,
    end_of_turn_ids,
    ensure_chat_template,
    prompt_ids,
    tokenize_exchange,
)
from icr.core.models import ModelLoadError, load_model, pick_device, pick_dtype, resolve_embedded, resolve_model_path


def test_resolve_model_path_kinds(tmp_path, tiny_dir):
    assert resolve_model_path(str(tiny_dir)) == str(tiny_dir)
    with pytest.raises(ModelLoadError, match="not in the local cache"):  # offline, a Hub id needs its snapshot
        resolve_model_path("some-org/some-model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_path(str(empty))
    with pytest.raises(ModelLoadError, match="no such GGUF"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="unknown embedded model"):
        resolve_embedded("embedded:nope")


def test_embedded_model_is_materialized_once(smollm_path):
    assert (resolve_embedded("embedded:smollm2-135m-instruct")).suffix == ".gguf"
    assert resolve_model_path("embedded:smollm2-135m-instruct") == smollm_path  # cached folder, same path
    names = {p.name for p in Path(smollm_path).iterdir()}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    config = json.loads((Path(smollm_path) / "config.json").read_text())
    assert "quantization_config" not in config


def test_pickle_only_checkpoints_refused(tmp_path, tiny_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_dir / "config.json").read_text())
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(str(folder), device="cpu")


def test_load_model_eval_mode_and_dtype(tiny_lm, tiny_dir):
    assert not tiny_lm.model.training
    assert next(tiny_lm.model.parameters()).dtype == torch.float32
    assert str(tiny_lm.device) == "cpu"
    assert tiny_lm.path == str(tiny_dir)
    assert tiny_lm.tokenizer.chat_template


def test_pick_device_and_dtype():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in {"cpu", "cuda"}
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    assert pick_dtype("float16", "cpu") == torch.float16


def test_plain_template_for_a_tokenizer_without_one(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    ensure_chat_template(tok)
    assert tok.chat_template == PLAIN_CHAT_TEMPLATE
    text = tok.decode(prompt_ids(tok, "Say hi."))
    assert text == "### Instruction:\nSay hi.\n\n### Response:\n"
    p, c = tokenize_exchange(tok, "Say hi.", "Hi!")
    assert tok.decode(p + c).endswith("Hi!" + tok.eos_token + "\n")
    assert tok.eos_token_id in c


def test_prompt_ids_use_the_models_chat_template(tokenizer):
    text = tokenizer.decode(prompt_ids(tokenizer, "Say hi."))
    assert "<|im_start|>user\nSay hi.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_tokenize_exchange_completion_ends_the_turn(tokenizer):
    p, c = tokenize_exchange(tokenizer, "Say hi.", "Hi there!")
    assert p == prompt_ids(tokenizer, "Say hi.")
    assert tokenizer.decode(c) == "Hi there!<|im_end|>\n"
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}], tokenize=False
    )
    assert tokenizer.decode(p + c) == full


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2
    assert common_prefix_length([7], [8]) == 0


def test_end_of_turn_ids(tiny_lm, tokenizer):
    ids = end_of_turn_ids(tokenizer, tiny_lm.model)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert len(ids) == len(set(ids))
    model = type("M", (), {"generation_config": type("G", (), {"eos_token_id": [5, 6]})()})()
    assert end_of_turn_ids(tokenizer, model)[:2] == [5, 6]
    assert end_of_turn_ids(tokenizer)[-1] == tokenizer.eos_token_id


def test_two_installs_of_one_gguf_share_one_conversion(tmp_path):
    """The dequantized-model cache is keyed by the file's bytes, not its path or mtime."""
    import os
    import shutil

    from icr.core.models import gguf_cache_dir

    gguf = resolve_embedded("embedded:smollm2-135m-instruct")
    copies = []
    for k, site in enumerate(("site-a", "site-b")):
        (tmp_path / site).mkdir()
        copies.append(Path(shutil.copy(gguf, tmp_path / site / gguf.name)))
        os.utime(copies[-1], ns=(10**18 + k, 10**18 + k))  # other mtimes too
    assert gguf_cache_dir(copies[0]) == gguf_cache_dir(copies[1]) == gguf_cache_dir(gguf)
    with open(copies[1], "r+b") as f:  # one byte changed: another conversion
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert gguf_cache_dir(copies[1]) != gguf_cache_dir(copies[0])


def test_dequantized_weights_load_strictly(tokenizer):
    from helpers import tiny_model
    from icr.core.models import _load_strictly

    model = tiny_model(tokenizer)
    state = model.state_dict()
    _load_strictly(tiny_model(tokenizer, seed=1), {k: v for k, v in state.items() if k != "lm_head.weight"})  # tied
    missing = {k: v for k, v in state.items() if not k.endswith("layers.0.mlp.up_proj.weight")}
    with pytest.raises(ModelLoadError, match="missing.*up_proj"):
        _load_strictly(tiny_model(tokenizer), missing)
    with pytest.raises(ModelLoadError, match="unexpected.*extra.weight"):
        _load_strictly(tiny_model(tokenizer), {**state, "extra.weight": torch.zeros(1)})


def test_cache_root_and_the_cache_command(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from icr.cli import main
    from icr.core.models import cache_root

    monkeypatch.delenv("ICR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "icr"
    monkeypatch.setenv("ICR_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    (tmp_path / "mine" / "gguf" / "m-1").mkdir(parents=True)
    (tmp_path / "mine" / "gguf" / "m-1" / "model.safetensors").write_bytes(b"x" * 2**20)
    (tmp_path / "mine" / "judgements").mkdir()
    listed = CliRunner().invoke(main, ["cache", "list"])
    assert listed.exit_code == 0 and "1.0 MiB" in listed.output and "1 entries" in listed.output
    cleared = CliRunner().invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0 and not (tmp_path / "mine" / "gguf").exists()
    assert (tmp_path / "mine" / "judgements").exists()  # judgements are kept unless asked
