"""The paper's judge: alpaca_eval's annotator read from the installed package, the language sentence,
the m/M log-probability rule, and `icr eval`'s default, end to end against a local server (127.0.0.1)."""

from __future__ import annotations

import json
import math
import re
import shutil
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pandas as pd
import pytest
from click.testing import CliRunner

from helpers import good_or_poor, local_endpoint, write_benchmark, write_outputs
from icr.config import JudgeConfig
from icr.eval.judges import JUDGES, make_judge
from icr.eval.judges.alpaca_eval import (
    LANGUAGE_REQUIREMENT,
    AlpacaEvalJudge,
    annotator_config,
    with_language_requirement,
)
from icr.eval.judges.base import JudgeError, JudgeRequest

alpaca_eval = pytest.importorskip("alpaca_eval")
from alpaca_eval import constants, utils  # noqa: E402  (after the importorskip)

SENTENCE = (
    "A good output should be in the same language as the instruction, except when the instruction "
    "explicitly requests the output in a different language."
)  # the wording, typed out
REQ = JudgeRequest('Nenne eine Farbe. "Bitte" {kurz}', "de", "Blau.", "The sky is blue.")


def installed_prompt(req: JudgeRequest, template: str) -> list[dict]:
    """What alpaca_eval itself makes of `template` for this request."""
    row = pd.DataFrame([{"instruction": req.instruction, "output_1": req.first, "output_2": req.second}])
    return utils.prompt_to_chatml(utils.make_prompts(row, template, batch_size=1)[0][0])


def test_prompt_is_the_installed_annotators_plus_the_language_sentence():
    judge = AlpacaEvalJudge(JudgeConfig(base_url="http://127.0.0.1:9/v1"))
    config = annotator_config()
    assert LANGUAGE_REQUIREMENT == SENTENCE
    assert config["completions_kwargs"]["model_name"] == judge.model == "gpt-4-1106-preview"
    assert judge.labels == ("m", "M")
    original = (constants.EVALUATORS_CONFIG_DIR / config["prompt_template"]).read_text(encoding="utf-8")
    got, plain = judge.messages(REQ), installed_prompt(REQ, original)
    assert [m["role"] for m in got] == [m["role"] for m in plain] == ["system", "user"]
    assert got[0] == plain[0]
    user = got[1]["content"]
    # the sentence opens the `## Task` section; removing it gives back alpaca_eval's own prompt
    assert f"## Task\n\n{SENTENCE} Evaluate the models" in user
    assert user.replace(f"{SENTENCE} ", "", 1) == plain[1]["content"]
    assert '"""Blau."""' in user and '"""The sky is blue."""' in user and REQ.instruction in user
    assert user.index('"model_identifier": "m"') < user.index("Blau.") < user.index('"model_identifier": "M"')


def test_the_annotator_is_read_from_the_package_not_copied(tmp_path):
    src = constants.EVALUATORS_CONFIG_DIR
    config = annotator_config()
    for rel in ("weighted_alpaca_eval_gpt4_turbo/configs.yaml", config["prompt_template"]):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, tmp_path / rel)
    template = tmp_path / config["prompt_template"]
    template.write_text(template.read_text().replace("highly efficient assistant", "CHANGED assistant"))
    changed = AlpacaEvalJudge(JudgeConfig(base_url="http://127.0.0.1:9/v1"), config_dir=str(tmp_path))
    assert changed.messages(REQ)[0]["content"].startswith("You are a CHANGED assistant")


def test_a_template_without_a_task_section_is_refused():
    with pytest.raises(JudgeError, match="## Task"):
        with_language_requirement("## Instruction\n\n{instruction}")


def test_verdict_is_alpaca_evals_logprob_rule_over_m_and_M():
    judge = AlpacaEvalJudge(JudgeConfig(base_url="http://127.0.0.1:9/v1"))
    top = [{"token": "M", "logprob": -0.2}, {"token": "m", "logprob": -1.9}, {"token": "The", "logprob": -4.0}]
    reply = {"choices": [{"logprobs": {"content": [{"token": "M", "logprob": -0.2, "top_logprobs": top}]}}]}
    assert judge.weighted_verdict(reply) == pytest.approx(math.exp(-1.9) / (math.exp(-1.9) + math.exp(-0.2)))
    none = {"choices": [{"logprobs": {"content": [{"token": "The", "logprob": -0.1, "top_logprobs": top[2:]}]}}]}
    assert judge.weighted_verdict(none) is None and judge.weighted_verdict({"choices": [{}]}) is None
    assert judge.sampled_verdict("m") == 1.0 and judge.sampled_verdict(" M ") == 0.0
    assert judge.sampled_verdict("A") is None


def test_registered_and_the_default_of_icr_eval():
    from icr.config import EvalConfig

    assert EvalConfig(prompts="p", output="o").judge.backend == "alpaca_eval"
    assert set(JUDGES) == {"alpaca_eval", "openai", "hf"}
    judge = make_judge(JudgeConfig(backend="alpaca_eval", base_url="http://127.0.0.1:9/v1"), "cpu", "auto")
    assert isinstance(judge, AlpacaEvalJudge)


class AlpacaEndpoint(BaseHTTPRequestHandler):
    """Chat completions for alpaca_eval's prompt: the output containing 'excellent' wins, else the
    reference ('Reference ...'); answers with m/M and their top log-probabilities."""

    received: ClassVar[list[dict]] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        AlpacaEndpoint.received.append(body)
        user = body["messages"][-1]["content"]
        outputs = re.findall(r'"model_identifier": "(m|M)",\s*"output": """(.*?)"""', user, re.DOTALL)
        assert [label for label, _ in outputs] == ["m", "M"]
        (_, first), (_, second) = outputs
        win = "m" if "excellent" in first else "M" if "excellent" in second else "m" if "Reference" in first else "M"
        lose = "M" if win == "m" else "m"
        top = [{"token": win, "logprob": -0.05}, {"token": lose, "logprob": -3.0}]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": win},
            "logprobs": {"content": [{"token": win, "logprob": -0.05, "top_logprobs": top}]},
        }
        data = json.dumps({"model": "gpt-4-1106-preview", "choices": [choice], "usage": {"prompt_tokens": 9}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def alpaca_endpoint():
    AlpacaEndpoint.received = []
    with local_endpoint(AlpacaEndpoint) as url:
        yield url


def test_icr_eval_judges_with_alpaca_evals_annotator_by_default(tmp_path, alpaca_endpoint):
    from icr.cli.commands import eval_command

    bench = write_benchmark(tmp_path / "bench")
    outs = write_outputs(tmp_path / "outs", bench, good_or_poor)
    result = CliRunner().invoke(
        eval_command,
        [  # no --judge: the default
            "--outputs",
            f"good={outs}",
            "--languages",
            "en,de",
            "--prompts",
            str(bench),
            "--judge-base-url",
            alpaca_endpoint,
            "--judge-cache",
            str(tmp_path / "cache"),
            "--output",
            str(tmp_path / "out"),
            "--no-lc",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    judged = AlpacaEndpoint.received[1:]  # after the preflight
    assert len(judged) == 20
    for body in AlpacaEndpoint.received:  # the annotator's decoding arguments, from its configs.yaml
        assert body["model"] == "gpt-4-1106-preview" and body["max_tokens"] == 1 and body["temperature"] == 1
        assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert all(f"## Task\n\n{SENTENCE} " in b["messages"][-1]["content"] for b in judged)
    p = math.exp(-0.05) / (math.exp(-0.05) + math.exp(-3.0))
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="model")
    for lang in ("en", "de"):
        assert board.at["good", f"{lang} WR"] == pytest.approx((7 * p + 3 * (1 - p)) * 10, abs=1e-4)
    meta = json.loads((tmp_path / "out" / "results.json").read_text())
    assert meta["judge"]["backend"] == "alpaca_eval" and meta["judge"]["annotator"] == "weighted_alpaca_eval_gpt4_turbo"
    assert meta["judge"]["alpaca_eval_version"] == alpaca_eval.__version__
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "log-probabilities of m/M" in md and "not comparable" not in md
