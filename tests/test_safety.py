"""Safety: the judge's API key never leaves the Authorization header, repository code and pickle
checkpoints are refused unless the config opts in, and run names cannot escape output_dir.

Already covered elsewhere (not repeated here): a pickle-only folder refused by `load_model`
(test_models.py::test_pickle_only_checkpoints_refused); the key absent from outputs, cache and CLI
output on a successful run and on a plain 401 (eval/test_judges.py::test_openai_judge_*); the run names
'a/b', '..', '.', '../x', 'a\\b', '' (test_config.py::test_unsafe_run_names_refused)."""

from __future__ import annotations

import json
import logging
import os
import traceback
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from click.testing import CliRunner

import icr.pipeline
import icr.training.sharding
from helpers import local_endpoint, write_benchmark, write_outputs
from icr.config import ConfigError, JudgeConfig, ModelsConfig, SamplingConfig, load_config
from icr.core.models import ModelLoadError, load_model, load_tokenizer
from icr.eval.judges.base import JudgeError, JudgeRequest
from icr.eval.judges.openai import OpenAIJudge
from icr.runtime.rundir import ModelPool, RunDir
from icr.stages import StageContext
from icr.stages.train import run_train

SECRET = "sk-test-SECRET-123"
KEY_ENV = "ICR_SAFETY_TEST_KEY"


# ---------------------------------------------------------------- the judge's API key


class EchoingEndpoint(BaseHTTPRequestHandler):
    """A careless (or hostile) server that quotes the Authorization header back in its errors and
    answers only when `ok` is set."""

    status = {"code": 401}

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        code = self.status["code"]
        if code == 400 and not body.get("logprobs"):
            code = 200  # refuses only the log-probability request: the judge retries without
        if code == 200:
            reply = {"model": "echo-1", "choices": [{"message": {"content": "A"}}], "usage": {"prompt_tokens": 3}}
        else:
            reply = {"error": {"message": f"Incorrect API key provided: {auth}. Header was {auth!r}"}}
        data = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def echoing():
    with local_endpoint(EchoingEndpoint) as url:
        yield url


def assert_no_secret(*texts: str, folders=()) -> None:
    for text in texts:
        assert SECRET not in text, text[:500]
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("code", [401, 403, 500])
def test_key_quoted_back_by_the_server_is_not_in_errors_or_logs(echoing, code, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    EchoingEndpoint.status["code"] = code
    judge = OpenAIJudge(JudgeConfig(model="judge-x", base_url=echoing, api_key_env=KEY_ENV, max_retries=1), backoff=0.0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(JudgeError) as info:
        judge.judge_one(JudgeRequest("Say hi.", "de", "Hallo", "Hi"))
    err = info.value
    assert f"HTTP {code}" in str(err) and "Incorrect API key" in str(err)  # the server's reason is still shown
    assert_no_secret(
        str(err),
        repr(err),
        "".join(traceback.format_exception(err)),
        caplog.text,
        json.dumps(judge.describe()),
        judge.judge_id,
    )


def test_key_quoted_in_a_refused_logprobs_request_is_not_logged(echoing, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    EchoingEndpoint.status["code"] = 400
    caplog.set_level(logging.DEBUG)
    judge = OpenAIJudge(JudgeConfig(model="judge-x", base_url=echoing, api_key_env=KEY_ENV, max_retries=0))
    assert judge.preflight() == "sampled"
    assert judge.judge_one(JudgeRequest("Say hi.", "de", "Hallo", "Hi")).p_first == 1.0
    assert "refused the log-probability request" in caplog.text
    assert_no_secret(caplog.text)


def test_unreachable_endpoint_error_has_no_key(monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    judge = OpenAIJudge(
        JudgeConfig(model="judge-x", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV, max_retries=1, timeout=2),
        backoff=0.0,
    )
    with pytest.raises(JudgeError) as info:
        judge.preflight()
    assert_no_secret(str(info.value), "".join(traceback.format_exception(info.value)), caplog.text)


def test_failing_evaluation_leaves_no_key_in_any_file_or_output(echoing, tmp_path, monkeypatch, caplog):
    from icr.cli.commands import eval_command

    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    bench = write_benchmark(tmp_path / "bench", langs=("en",), n=3)
    outs = write_outputs(tmp_path / "outs", bench, lambda i: f"answer {i}", langs=("en",))
    args = [
        "--outputs",
        f"m={outs}",
        "--languages",
        "en",
        "--prompts",
        str(bench),
        "--judge-model",
        "judge-x",
        "--judge-base-url",
        echoing,
        "--judge-api-key-env",
        KEY_ENV,
        "--judge-max-retries",
        "0",
        "--judge-cache",
        str(tmp_path / "cache"),
        "--output",
        str(tmp_path / "out"),
        "--no-lc",
    ]
    for code in (401, 200):  # refused, then (another key) accepted: the same folders
        EchoingEndpoint.status["code"] = code
        result = CliRunner().invoke(eval_command, args)
        assert (result.exit_code == 0) == (code == 200), result.output
        assert_no_secret(result.output, caplog.text, folders=[tmp_path / "out", tmp_path / "cache"])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            assert_no_secret("".join(traceback.format_exception(result.exception)))
    assert "HTTP 401" not in result.output and (tmp_path / "out" / "results.json").exists()


# ---------------------------------------------------------------- repository code and pickle checkpoints


@pytest.fixture
def spy_from_pretrained(monkeypatch):
    """Records the keyword arguments of every model/tokenizer `from_pretrained`, then loads as usual."""
    import transformers

    calls = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_repository_code_is_not_run_unless_the_config_opts_in(spy_from_pretrained, tiny_dir, tmp_path):
    load_model(str(tiny_dir), device="cpu")
    load_tokenizer(str(tiny_dir))
    assert {name for name, _ in spy_from_pretrained} == {"AutoModelForCausalLM", "AutoTokenizer"}
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in spy_from_pretrained)
    model_kwargs = [k for name, k in spy_from_pretrained if name == "AutoModelForCausalLM"]
    assert all(k.get("use_safetensors") is True for k in model_kwargs)  # no silent fallback to .bin files
    for opt_in in (False, True):
        spy_from_pretrained.clear()
        cfg = load_config(
            overrides={"output_dir": str(tmp_path), "models.device": "cpu", "models.trust_remote_code": opt_in}
        )
        ModelPool(cfg).get(str(tiny_dir))
        assert len(spy_from_pretrained) == 2
        assert all(kwargs["trust_remote_code"] is opt_in for _, kwargs in spy_from_pretrained)


@pytest.fixture(scope="module")
def pickle_dir(tokenizer, tmp_path_factory):
    """A tiny model whose weights are only a pickle (pytorch_model.bin)."""
    import torch

    from helpers import tiny_model

    folder = tmp_path_factory.mktemp("pickled")
    model = tiny_model(tokenizer)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    return folder


def test_pickle_checkpoint_loads_only_with_allow_pickle(pickle_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        ModelPool(load_config(overrides={"output_dir": str(tmp_path), "models.device": "cpu"})).get(str(pickle_dir))
    cfg = load_config(overrides={"output_dir": str(tmp_path), "models.device": "cpu", "models.allow_pickle": True})
    lm = ModelPool(cfg).get(str(pickle_dir))
    assert lm.path == str(pickle_dir) and not lm.model.training


def test_vllm_generation_refuses_a_pickle_checkpoint_before_loading_it(pickle_dir, tmp_path):
    """vLLM loads weights itself: the folder is refused before vLLM is even imported (here, where
    vLLM is not installed, the error would otherwise be 'needs vLLM')."""
    from icr.engines.sampling import make_generator

    cfg = load_config(
        overrides={
            "output_dir": str(tmp_path),
            "models.policy": str(pickle_dir),
            "data.languages": ["en"],
            "data.limit": 1,
            "generate.backend": "vllm",
        }
    )
    with pytest.raises(ModelLoadError, match="pickle"):
        icr.pipeline.run_stage(cfg, "generate")
    with pytest.raises(ModelLoadError, match="pickle"):
        make_generator(str(pickle_dir), SamplingConfig(backend="vllm"), ModelsConfig(), load_model)


@pytest.mark.parametrize("allow_pickle,trust", [(False, False), (True, True)])
def test_training_loads_the_policy_under_the_configured_safety_settings(tmp_path, monkeypatch, allow_pickle, trust):
    seen = {}

    class Stop(Exception):
        pass

    def fake_load_model(spec, **kwargs):
        seen.update(kwargs, spec=spec)
        raise Stop

    monkeypatch.setattr(icr.training.sharding, "load_model", fake_load_model)
    cfg = load_config(
        overrides={
            "output_dir": str(tmp_path),
            "name": "t",
            "models.policy": "some/policy",
            "models.allow_pickle": allow_pickle,
            "models.trust_remote_code": trust,
        }
    )
    run = RunDir(cfg)
    pair = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    run.pairs_file(0).parent.mkdir(parents=True)
    run.pairs_file(0).write_text(json.dumps(pair) + "\n")
    with pytest.raises(Stop):
        run_train(StageContext(run, 0, ModelPool(cfg), None))
    assert seen["spec"] == "some/policy"
    assert seen.get("allow_pickle", False) is allow_pickle and seen["trust_remote_code"] is trust


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["/tmp/evil", "/", "a\x00b", "\x00", "..\\..\\x", "x/..", "./x"])
def test_more_unsafe_run_names_refused(name):
    with pytest.raises(ConfigError, match="name"):
        load_config(overrides={"name": name})


@pytest.mark.parametrize("name", ["...", "run 1", "ünïcödé-名前", "-x", "~"])
def test_odd_but_plain_names_stay_inside_output_dir(name, tmp_path):
    cfg = load_config(overrides={"name": name, "output_dir": str(tmp_path)})
    root = RunDir(cfg).root
    assert root.parent == tmp_path and root.resolve().parent == tmp_path.resolve() and root.is_dir()
    assert os.listdir(tmp_path) == [name]
