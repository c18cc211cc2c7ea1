"""`openai` judge: any OpenAI-compatible chat-completions endpoint over plain HTTP (stdlib
`urllib`), with a preflight call that decides the verdict rule, retries with backoff, a
requests-per-minute limit and a thread pool. The API key is read from an environment variable and
sent only in the Authorization header: it is never part of a cache key, record, log line or error
message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from icr.config import JudgeConfig
from icr.eval.judges.base import (
    PROMPT_VERSION,
    JudgeError,
    Judgement,
    JudgeRequest,
    judge_messages,
    sampled_verdict,
    verdict_probability,
)

log = logging.getLogger(__name__)


class RateLimiter:
    """At most `rpm` request starts per minute across threads (0 = no limit)."""

    def __init__(self, rpm: float):
        self.interval = 60.0 / rpm if rpm and rpm > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIJudge:
    """Chat-completions judge: POST {base_url}/chat/completions, one token, top log-probabilities."""

    top_logprobs = 5

    def __init__(self, config: JudgeConfig, backoff: float = 1.0):
        """`backoff`: seconds before the first retry, doubled at each next one."""
        self.model = config.model
        self.base_url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip(
            "/"
        )
        self.api_key_env = config.api_key_env
        self.concurrency, self.max_retries, self.timeout = config.concurrency, config.max_retries, config.timeout
        self.backoff = backoff
        self.limiter = RateLimiter(config.rpm)
        self.rule: str | None = None
        self.served_model = ""
        self.judge_id = f"openai:{self.base_url}:{self.model}"

    def messages(self, req: JudgeRequest) -> list[dict[str, str]]:
        """The chat messages this judge sends for `req` (and that key its cache entry)."""
        return judge_messages(req)

    def weighted_verdict(self, reply: dict[str, Any]) -> float | None:
        """P(first answer better) from the reply's top log-probabilities; None if unusable."""
        return verdict_probability(_top_logprobs(reply))

    def sampled_verdict(self, text: str) -> float | None:
        return sampled_verdict(text)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": self.model,
            "served_model": self.served_model,
            "base_url": self.base_url,
            "rule": self.rule,
            "prompt_version": PROMPT_VERSION,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _redact(self, text: str) -> str:
        """`text` with the API key blanked out: a server may quote the request's header in an error."""
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "<redacted>") if key else text

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries on rate limits, server errors and network faults; other HTTP errors
        raise JudgeError with the status and the start of the body (never the headers)."""
        data = json.dumps(payload).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            request = urllib.request.Request(
                f"{self.base_url}/chat/completions", data=data, headers=self._headers(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                try:
                    body = self._redact(err.read().decode("utf-8", "replace"))[:300]
                except OSError:
                    body = ""
                if err.code not in RETRY_STATUS or attempt == self.max_retries:
                    raise JudgeError(f"{self.base_url}: HTTP {err.code}: {body}") from None
                delay = _retry_after(err.headers.get("Retry-After"))
                delay = self.backoff * 2**attempt if delay is None else delay
                reason = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as err:
                if attempt == self.max_retries:
                    raise JudgeError(self._redact(f"{self.base_url}: {type(err).__name__}: {err}")) from None
                delay = self.backoff * 2**attempt
                reason = self._redact(f"{type(err).__name__}: {err}")
            log.info(
                "judge request to %s failed (%s; attempt %d/%d); retrying in %.1fs",
                self.base_url,
                reason,
                attempt + 1,
                self.max_retries + 1,
                delay,
            )
            time.sleep(min(delay, 60.0))
        raise JudgeError("unreachable")

    def _payload(self, messages: list[dict[str, str]], logprobs: bool) -> dict[str, Any]:
        payload = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0}
        if logprobs:
            payload.update(logprobs=True, top_logprobs=self.top_logprobs)
        return payload

    def preflight(self) -> str:
        """One probe request: 'logprobs' if the endpoint returns top log-probabilities, else 'sampled'."""
        probe = self.messages(JudgeRequest("Which letter comes first in the alphabet?", "en", "A", "Z"))
        try:
            reply = self._post(self._payload(probe, logprobs=True))
            has = bool(_top_logprobs(reply))
        except JudgeError as err:
            if "HTTP 4" not in str(err):
                raise
            log.info("endpoint refused the log-probability request (%s); retrying without", err)
            reply, has = self._post(self._payload(probe, logprobs=False)), False
        self.served_model = str(reply.get("model") or self.model)
        self.rule = "logprobs" if has else "sampled"
        log.info(
            "judge %s (served: %s): %s",
            self.model,
            self.served_model,
            "log-probabilities of 'A'/'B' (weighted)"
            if has
            else "sampled verdict (the endpoint returns no log-probabilities)",
        )
        return self.rule

    def judge_one(self, req: JudgeRequest) -> Judgement:
        if self.rule is None:
            self.preflight()
        reply = self._post(self._payload(self.messages(req), logprobs=self.rule == "logprobs"))
        choices = reply.get("choices") or [{}]
        text = ((choices[0].get("message") or {}).get("content")) or ""
        usage = {k: int(v) for k, v in (reply.get("usage") or {}).items() if isinstance(v, int)}
        served = str(reply.get("model") or self.served_model)
        p = self.weighted_verdict(reply) if self.rule == "logprobs" else None
        if p is not None:
            return Judgement(p, "logprobs", text, served, usage)
        return Judgement(self.sampled_verdict(text), "sampled", text, served, usage)

    def judge_many(self, requests: list[JudgeRequest], on_done: Callable[[int, Judgement], None]) -> None:
        if self.rule is None:
            self.preflight()
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        futures = {pool.submit(self.judge_one, req): i for i, req in enumerate(requests)}
        error: BaseException | None = None
        try:
            for future in as_completed(futures):  # each verdict is handed over (and cached) as it lands
                try:
                    result = future.result()
                except BaseException as err:  # stop queued requests; still hand over those in flight
                    error = error or err
                    pool.shutdown(wait=False, cancel_futures=True)
                    continue
                on_done(futures[future], result)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _top_logprobs(reply: dict[str, Any]) -> list[tuple[str, float]]:
    """(token, logprob) of the first generated token's top candidates, [] if the reply has none."""
    try:
        first = reply["choices"][0]["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError):
        return []
    cands = [(c.get("token", ""), c.get("logprob")) for c in first.get("top_logprobs") or []]
    return cands or [(first.get("token", ""), first.get("logprob"))]
