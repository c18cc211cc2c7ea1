"""Judges: the verdict rule, the cache, judging orders, the local HF judge, and the OpenAI-compatible
backend end to end against a local HTTP server (127.0.0.1 only) that checks what it receives."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler

import pandas as pd
import pytest
from click.testing import CliRunner

from helpers import good_or_poor, local_endpoint, write_benchmark, write_outputs
from icr.eval.judges.base import Judgement, JudgeRequest, judge_messages, sampled_verdict, verdict_probability
from icr.eval.judges.cache import JudgementCache
from icr.eval.judges.hf import HFJudge
from icr.eval.judging import PairItem
from icr.eval.judging import judge_pairs as keyed_judge_pairs

SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"


# ---------------------------------------------------------------- verdict rule and cache


def test_verdict_probability_and_sampled_fallback():
    assert verdict_probability([("A", math.log(0.6)), (" B", math.log(0.2)), ("C", math.log(0.1))]) == pytest.approx(
        0.75
    )
    assert verdict_probability([(" A", math.log(0.3)), ("A", math.log(0.3))]) == 1.0  # variants add up
    assert verdict_probability([("The", -0.1)]) is None
    assert sampled_verdict(" B") == 0.0 and sampled_verdict("**A**") == 1.0 and sampled_verdict("maybe") is None


def test_cache_key_covers_judge_order_and_both_outputs(tmp_path):
    req = JudgeRequest("Say hi", "de", "Hallo", "Hi")
    key = JudgementCache.key("j1", judge_messages(req))
    others = [
        JudgementCache.key("j2", judge_messages(req)),
        JudgementCache.key("j1", judge_messages(JudgeRequest("Say hi", "de", "Hi", "Hallo"))),
        JudgementCache.key("j1", judge_messages(JudgeRequest("Say hi", "de", "Hallo", "Hi!"))),
        JudgementCache.key("j1", judge_messages(JudgeRequest("Say hi", "fr", "Hallo", "Hi"))),
    ]
    assert len({key, *others}) == 5
    cache = JudgementCache(tmp_path)
    assert cache.get(key) is None
    threads = [
        threading.Thread(target=cache.put, args=(key, "j1", Judgement(0.25, "logprobs", "B", "m"))) for _ in range(8)
    ]  # concurrent writers of one key: atomic replace, no torn file
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get(key).p_first == 0.25
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.json"]
    (tmp_path / key[:2] / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None  # a corrupt entry is recomputed, not trusted


class FakeJudge:
    """Counts calls; p_first = fn(request)."""

    judge_id = "fake:1"

    def __init__(self, fn, fail_at: int | None = None):
        self.fn, self.fail_at, self.calls, self.preflights = fn, fail_at, 0, 0

    def messages(self, req):
        return judge_messages(req)

    def describe(self):
        return {"backend": "fake", "model": "fake", "rule": "logprobs", "prompt_version": "x"}

    def preflight(self):
        self.preflights += 1
        return "logprobs"

    def judge_many(self, requests, on_done):
        for i, req in enumerate(requests):
            if i == self.fail_at:
                raise RuntimeError("endpoint died")
            self.calls += 1
            on_done(i, Judgement(self.fn(req), "logprobs"))


def judge_pairs(*args, **kwargs):
    """The results in the order of the items."""
    results, stats = keyed_judge_pairs(*args, **kwargs)
    return list(results.values()), stats


def items(n=6, swap=False):
    out = []
    for i in range(1, n + 1):
        model, ref = f"model answer {i}", f"reference answer {i}"
        if swap:
            model, ref = ref, model
        out.append(PairItem("m", "en", i, f"question {i}", model, ref))
    return out


def test_orders_random_is_swap_symmetric_and_both_cancels_position_bias(tmp_path):
    biased = FakeJudge(lambda req: 0.9)  # always prefers answer A
    res, stats = judge_pairs(biased, JudgementCache(tmp_path / "c1"), items(), order="both")
    assert biased.calls == 12 and stats["requested"] == 12
    assert all(r.p_model == pytest.approx(0.5) and r.n_judgements == 2 for r in res)
    res, _ = judge_pairs(FakeJudge(lambda req: 0.9), JudgementCache(tmp_path / "c2"), items(), order="random")
    assert sorted({round(r.p_model, 6) for r in res}) == [0.1, 0.9]  # both orders occur

    prefers_model = FakeJudge(lambda req: 1.0 if req.first.startswith("model") else 0.0)
    cache = JudgementCache(tmp_path / "c3")
    first, _ = judge_pairs(prefers_model, cache, items(), order="random", seed=3)
    assert [r.p_model for r in first] == [1.0] * 6
    again = FakeJudge(lambda req: 0.5)
    repeat, stats = judge_pairs(again, cache, items(), order="random", seed=3)
    swapped, _ = judge_pairs(again, cache, items(swap=True), order="random", seed=3)
    assert again.calls == 0 and again.preflights == 0 and stats["cached"] == 6  # all from the cache
    assert [r.p_model for r in repeat] == [1.0] * 6 and [r.p_model for r in swapped] == [0.0] * 6


def test_identical_outputs_tie_for_free_and_missing_verdicts_are_none(tmp_path):
    same = [PairItem("m", "de", 1, "q", "same text", " same text ")]
    judge = FakeJudge(lambda req: None)
    res, _ = judge_pairs(judge, JudgementCache(tmp_path), same + items(2))
    assert judge.calls == 2
    assert (res[0].p_model, res[0].rule) == (0.5, "identical")
    assert res[1].p_model is None and res[1].rule == "none"


def test_interrupted_judging_keeps_what_was_paid_for(tmp_path):
    cache = JudgementCache(tmp_path)
    with pytest.raises(RuntimeError, match="endpoint died"):
        judge_pairs(FakeJudge(lambda req: 0.7, fail_at=4), cache, items(), order="random")
    resumed = FakeJudge(lambda req: 0.7)
    judge_pairs(resumed, cache, items(), order="random")
    assert resumed.calls == 2


def test_hf_judge_is_a_probability_and_batching_does_not_change_it(tiny_lm):
    reqs = [JudgeRequest(f"Question {i}?" + " more" * i, "en", f"Answer one {i}", "Two" * (i + 1)) for i in range(5)]
    single, batched = HFJudge(tiny_lm, batch_size=1), HFJudge(tiny_lm, batch_size=3)
    got = {}
    for judge in (single, batched):
        out = [None] * len(reqs)
        judge.judge_many(reqs, lambda i, j, out=out: out.__setitem__(i, j.p_first))
        got[judge.batch_size] = out
    assert all(0 < p < 1 for p in got[1])
    assert got[1] == pytest.approx(got[3], abs=1e-5)
    assert single.judge_id.startswith(f"hf:{tiny_lm.spec}@") and single.judge_id == batched.judge_id


# ---------------------------------------------------------------- OpenAI-compatible endpoint, end to end


class FakeEndpoint(BaseHTTPRequestHandler):
    """Chat completions: the answer containing 'excellent' wins, else the one containing 'Reference'."""

    mode = {"logprobs": True, "refuse_logprobs": False, "fail_first": 0, "status": 200}
    received: list[dict] = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeEndpoint.received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        mode = FakeEndpoint.mode
        if mode["status"] != 200:
            return self._send(mode["status"], {"error": {"message": "invalid api key"}})
        if mode["fail_first"] > 0:
            mode["fail_first"] -= 1
            return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        if mode["refuse_logprobs"] and body.get("logprobs"):
            return self._send(400, {"error": {"message": "logprobs are not supported"}})
        user = body["messages"][-1]["content"]
        a = re.search(r"<answer_A>\n(.*?)\n</answer_A>", user, re.S).group(1)
        b = re.search(r"<answer_B>\n(.*?)\n</answer_B>", user, re.S).group(1)
        win = "A" if "excellent" in a else "B" if "excellent" in b else "B" if "Reference" in b else "A"
        lose = "B" if win == "A" else "A"
        choice = {"index": 0, "message": {"role": "assistant", "content": win}, "finish_reason": "length"}
        if mode["logprobs"] and body.get("logprobs"):
            top = [{"token": win, "logprob": -0.01}, {"token": lose, "logprob": -5.0}, {"token": "The", "logprob": -7}]
            choice["logprobs"] = {"content": [{"token": win, "logprob": -0.01, "top_logprobs": top}]}
        self._send(
            200,
            {
                "id": "c",
                "object": "chat.completion",
                "model": "judge-x-2024-01-01",
                "choices": [choice],
                "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
            },
        )


@pytest.fixture
def endpoint():
    FakeEndpoint.received = []
    FakeEndpoint.mode = {"logprobs": True, "refuse_logprobs": False, "fail_first": 0, "status": 200}
    with local_endpoint(FakeEndpoint) as url:
        yield url


def run_eval(tmp_path, url, *extra):
    from icr.cli.commands import eval_command

    bench = write_benchmark(tmp_path / "bench") if not (tmp_path / "bench").exists() else tmp_path / "bench"
    outs = write_outputs(tmp_path / "outs", bench, good_or_poor)
    args = [
        "--outputs",
        f"good={outs}",
        "--languages",
        "en,de",
        "--prompts",
        str(bench),
        "--judge",
        "openai",
        "--judge-model",
        "judge-x",
        "--judge-base-url",
        url,
        "--judge-api-key-env",
        "ICR_TEST_JUDGE_KEY",
        "--judge-cache",
        str(tmp_path / "cache"),
        "--output",
        str(tmp_path / "out"),
        "--no-lc",
        "--judge-concurrency",
        "3",
        *extra,
    ]
    return CliRunner().invoke(eval_command, args, catch_exceptions=False)


def test_openai_judge_end_to_end_with_logprobs_and_cache(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("ICR_TEST_JUDGE_KEY", SECRET)
    estimate = run_eval(tmp_path, endpoint, "--estimate-only")  # plans and prices, sends nothing
    assert estimate.exit_code == 0 and "estimate only" in estimate.output and FakeEndpoint.received == []
    result = run_eval(tmp_path, endpoint)
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="model")
    p = math.exp(-0.01) / (math.exp(-0.01) + math.exp(-5.0))  # the weighted rule, not the sampled one
    for lang in ("en", "de"):
        assert board.at["good", f"{lang} WR"] == pytest.approx((7 * p + 3 * (1 - p)) * 10, abs=1e-4)
        assert board.at["good", f"{lang} n"] == 10

    got = FakeEndpoint.received
    assert len(got) == 1 + 20  # preflight + one judgement per pair (random order)
    assert "Which letter comes first" in got[0]["body"]["messages"][-1]["content"]
    prompts = {lang: json.loads((tmp_path / "bench" / "prompts" / f"{lang}.json").read_text()) for lang in ("en", "de")}
    seen = set()
    for r in got:
        body = r["body"]
        assert r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {SECRET}"
        assert body["model"] == "judge-x" and body["logprobs"] is True and body["top_logprobs"] == 5
        assert body["max_tokens"] == 1
    for r in got[1:]:
        user = r["body"]["messages"][-1]["content"]
        lang = "en" if "[en]" in user else "de"
        assert ("English" if lang == "en" else "German") in user  # the multilingual prompt names the language
        i = int(re.search(r"Question (\d+):", user).group(1))
        assert prompts[lang][i - 1]["instruction"] in user
        assert good_or_poor(i) in user and f"Reference answer {i}: blue" in user
        seen.add((lang, i))
    assert len(seen) == 20
    for path in [*(tmp_path / "out").rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.output
    meta = json.loads((tmp_path / "out" / "results.json").read_text())
    assert meta["judge"]["served_model"] == "judge-x-2024-01-01" and meta["judge"]["rule"] == "logprobs"
    assert meta["judging"]["served_models"] == ["judge-x-2024-01-01"] and meta["judging"]["rules"] == ["logprobs"]
    assert "`judge-x-2024-01-01`" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert "not comparable with the paper's Table 2" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert meta["judging"]["estimated_prompt_tokens"] > 0

    second = run_eval(tmp_path, endpoint)  # served entirely from the cache: not even a preflight
    assert second.exit_code == 0 and len(FakeEndpoint.received) == 21
    again = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="model")
    assert again.at["good", "en WR"] == board.at["good", "en WR"]
    meta = json.loads((tmp_path / "out" / "results.json").read_text())  # judge version kept from the cache
    assert meta["judging"]["served_models"] == ["judge-x-2024-01-01"] and meta["judging"]["requested"] == 0


@pytest.mark.parametrize("mode", [{"logprobs": False}, {"refuse_logprobs": True}])
def test_openai_judge_without_logprobs_uses_the_sampled_verdict(tmp_path, endpoint, mode):
    FakeEndpoint.mode.update(mode)
    result = run_eval(tmp_path, endpoint)
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="model")
    assert board.at["good", "en WR"] == 70.0 and board.at["good", "de WR"] == 70.0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["judge"]["rule"] == "sampled"
    judged = [r for r in FakeEndpoint.received if "Which letter" not in r["body"]["messages"][-1]["content"]]
    assert len(judged) == 20 and not any(r["body"].get("logprobs") for r in judged)


def test_openai_judge_retries_rate_limits_and_reports_hard_errors(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("ICR_TEST_JUDGE_KEY", SECRET)
    FakeEndpoint.mode["fail_first"] = 3
    result = run_eval(tmp_path, endpoint, "--judge-order", "both")
    assert result.exit_code == 0, result.output
    assert len(FakeEndpoint.received) == 3 + 1 + 40
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="model")
    assert board.at["good", "en n"] == 10

    FakeEndpoint.mode["status"] = 401
    (tmp_path / "cache2").mkdir()
    from icr.cli.commands import eval_command

    bad = CliRunner().invoke(
        eval_command,
        [
            "--outputs",
            f"good={tmp_path / 'outs'}",
            "--languages",
            "en",
            "--prompts",
            str(tmp_path / "bench"),
            "--judge-model",
            "judge-x",
            "--judge-base-url",
            endpoint,
            "--judge-api-key-env",
            "ICR_TEST_JUDGE_KEY",
            "--judge-cache",
            str(tmp_path / "cache2"),
            "--output",
            str(tmp_path / "out2"),
            "--no-lc",
        ],
    )
    assert bad.exit_code != 0 and "HTTP 401" in bad.output and SECRET not in bad.output
