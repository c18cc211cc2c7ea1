"""Pairwise judges: the probability that answer A beats answer B, with an on-disk cache.

Both backends see the same multilingual prompt (`judge_messages`) and apply the same verdict rule:
the judge's log-probabilities of the verdict tokens 'A' and 'B' at the first answer position give
P(A) = p_A / (p_A + p_B) (alpaca_eval's weighted judges do the same with 'm'/'M'); a judge whose
endpoint returns no log-probabilities falls back to its sampled verdict (P = 1 or 0).

* `openai`: any OpenAI-compatible chat-completions endpoint over plain HTTP (stdlib `urllib`), with
  a preflight call that decides the rule, retries with backoff, a requests-per-minute limit and a
  thread pool. The API key is read from an environment variable and sent only in the
  Authorization header: it is never part of a cache key, record, log line or error message.
* `hf`: a local Hugging Face model run in-process (batched forward, next-token log-softmax).

`JudgementCache` stores one small JSON file per judgement, named by the SHA-256 of (judge identity,
prompt version, messages): the messages hold the instruction and both outputs in their shown order.
Files are written atomically, so concurrent runs sharing a cache are safe (the worst case is the
same judgement computed twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from icr.data import read_json, write_json_atomic
from icr.languages import language_name

log = logging.getLogger(__name__)

PROMPT_VERSION = "icr-pairwise-v1"
VERDICTS = ("A", "B")
SYSTEM_PROMPT = (
    "You are an impartial expert judge of AI assistants, fluent in every language. You compare two "
    "answers to the same user instruction and decide which one the user would prefer."
)
USER_TEMPLATE = """The user wrote the following instruction in {language}.

<instruction>
{instruction}
</instruction>

<answer_A>
{first}
</answer_A>

<answer_B>
{second}
</answer_B>

Which answer follows the instruction better? Judge helpfulness, correctness, depth and clarity. The \
user expects an answer in {language}: an answer in another language is a serious flaw, unless the \
instruction asks for that language. Do not let the order of the answers, their length or their \
formatting sway you.

Reply with one letter only: A if answer A is better, B if answer B is better."""


class JudgeError(RuntimeError):
    """A judge that cannot work (bad endpoint, refused request, unusable model)."""


@dataclass(frozen=True)
class JudgeRequest:
    instruction: str
    lang: str
    first: str  # shown as answer A
    second: str  # shown as answer B


@dataclass
class Judgement:
    p_first: float | None  # P(answer A is better); None = no usable verdict
    rule: str  # 'logprobs' or 'sampled'
    raw: str = ""  # the judge's reply (sampled token)
    served_model: str = ""  # model name/version the endpoint reported (or the local fingerprint)
    usage: dict[str, int] = field(default_factory=dict)


def judge_messages(req: JudgeRequest) -> list[dict[str, str]]:
    user = USER_TEMPLATE.format(language=language_name(req.lang), instruction=req.instruction.strip(),
                                first=req.first.strip(), second=req.second.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def verdict_probability(token_logprobs: list[tuple[str, float]]) -> float | None:
    """P(A) from (token, log-probability) candidates: the mass of tokens reading 'A' over that of
    'A' and 'B' (surrounding spaces ignored); None when neither appears."""
    mass = {v: 0.0 for v in VERDICTS}
    for token, logprob in token_logprobs:
        key = token.strip()
        if key in mass and logprob is not None and math.isfinite(logprob):
            mass[key] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["A"] / total if total > 0 else None


def sampled_verdict(text: str) -> float | None:
    """1.0 for a reply starting with 'A', 0.0 for 'B', None otherwise."""
    head = text.strip().lstrip("*\"'([").upper()[:1]
    return {"A": 1.0, "B": 0.0}.get(head)


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """Rough prompt size for cost estimates: UTF-8 bytes / 3 (conservative for non-Latin scripts)."""
    return sum(len(m["content"].encode("utf-8")) for m in messages) // 3 + 8 * len(messages)


class Judge(Protocol):
    judge_id: str  # identity in cache keys (backend, model, endpoint, weights)

    def describe(self) -> dict[str, Any]: ...

    def preflight(self) -> str: ...

    def judge_many(self, requests: list[JudgeRequest], on_done: Callable[[int, Judgement], None]) -> None: ...


# ---------------------------------------------------------------- cache


class JudgementCache:
    """One JSON file per judgement under `root/<2 hex>/<sha256>.json`, written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(judge_id: str, messages: list[dict[str, str]]) -> str:
        payload = json.dumps({"judge": judge_id, "prompt_version": PROMPT_VERSION, "messages": messages},
                             ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Judgement | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            record = read_json(path)
            return Judgement(**{k: record[k] for k in ("p_first", "rule", "raw", "served_model", "usage")})
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable cached judgement ignored", path)
            return None

    def put(self, key: str, judge_id: str, judgement: Judgement) -> None:
        write_json_atomic(self._path(key), {"judge": judge_id, **asdict(judgement),
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


# ---------------------------------------------------------------- OpenAI-compatible endpoint


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

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, rpm: float = 0, max_retries: int = 6, timeout: float = 120.0,
                 top_logprobs: int = 5, backoff: float = 1.0):
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency, self.max_retries, self.timeout = max(1, concurrency), max_retries, timeout
        self.top_logprobs, self.backoff = top_logprobs, backoff
        self.limiter = RateLimiter(rpm)
        self.rule: str | None = None
        self.served_model = ""
        self.judge_id = f"openai:{self.base_url}:{model}"

    def messages(self, req: JudgeRequest) -> list[dict[str, str]]:
        """The chat messages this judge sends for `req` (and that key its cache entry)."""
        return judge_messages(req)

    def weighted_verdict(self, reply: dict[str, Any]) -> float | None:
        """P(first answer better) from the reply's top log-probabilities; None if unusable."""
        return verdict_probability(_top_logprobs(reply))

    def sampled_verdict(self, text: str) -> float | None:
        return sampled_verdict(text)

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "served_model": self.served_model,
                "base_url": self.base_url, "rule": self.rule, "prompt_version": PROMPT_VERSION}

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
            request = urllib.request.Request(f"{self.base_url}/chat/completions", data=data,
                                             headers=self._headers(), method="POST")
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
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as err:
                if attempt == self.max_retries:
                    raise JudgeError(self._redact(f"{self.base_url}: {type(err).__name__}: {err}")) from None
                delay = self.backoff * 2**attempt
            log.info("judge request failed (attempt %d/%d); retrying in %.1fs", attempt + 1, self.max_retries + 1,
                     delay)
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
        log.info("judge %s (served: %s): %s", self.model, self.served_model,
                 "log-probabilities of 'A'/'B' (weighted)" if has else
                 "sampled verdict (the endpoint returns no log-probabilities)")
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


# ---------------------------------------------------------------- local Hugging Face model


def weights_fingerprint(path: str | Path) -> str:
    """Identity of local weights: config.json content plus (name, size, mtime) of weight files;
    a Hub id is its own identity."""
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in {".safetensors", ".bin", ".gguf"}:
            stat = file.stat()
            digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class HFJudge:
    """A local causal LM as judge: next-token log-softmax after the rendered prompt, batched with
    left padding (explicit position ids, so a prompt's result does not depend on its batch)."""

    def __init__(self, lm, batch_size: int = 4):
        self.lm, self.batch_size = lm, max(1, batch_size)
        tok = lm.tokenizer
        self.verdict_ids = {v: sorted({tok.encode(s, add_special_tokens=False)[0] for s in (v, f" {v}")})
                            for v in VERDICTS}
        if set(self.verdict_ids["A"]) & set(self.verdict_ids["B"]):
            raise JudgeError(f"{lm.spec}: the tokenizer does not tell the verdict tokens 'A' and 'B' apart")
        self.fingerprint = weights_fingerprint(lm.path)
        self.judge_id = f"hf:{lm.spec}@{self.fingerprint}"
        self.rule = "logprobs"

    def describe(self) -> dict[str, Any]:
        return {"backend": "hf", "model": self.lm.spec, "served_model": f"{self.lm.path}@{self.fingerprint}",
                "rule": self.rule, "prompt_version": PROMPT_VERSION}

    def preflight(self) -> str:
        log.info("judge %s (local): log-probabilities of 'A'/'B' (weighted)", self.lm.spec)
        return self.rule

    def _ids(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.lm.tokenizer
        try:
            out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        except Exception:  # a template without a system role: fold the system prompt into the user turn
            merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}]
            out = tok.apply_chat_template(merged, tokenize=True, add_generation_prompt=True, return_dict=True)
        return list(out["input_ids"])

    def judge_many(self, requests: list[JudgeRequest], on_done: Callable[[int, Judgement], None]) -> None:
        import torch

        encoded = [self._ids(judge_messages(r)) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(encoded[i]))
        pad = self.lm.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            device = self.lm.device
            with torch.no_grad():
                logits = self.lm.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       position_ids=positions.to(device), logits_to_keep=1).logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(batch):
                lp = {v: torch.logsumexp(logp[row, self.verdict_ids[v]], dim=0).item() for v in VERDICTS}
                p_first = 1.0 / (1.0 + math.exp(lp["B"] - lp["A"]))
                on_done(i, Judgement(p_first, "logprobs", "A" if p_first >= 0.5 else "B", self.fingerprint,
                                     {"prompt_tokens": len(encoded[i])}))


# ---------------------------------------------------------------- registry


def _make_openai(model: str | None = None, **options) -> OpenAIJudge:
    keys = ("base_url", "api_key_env", "concurrency", "rpm", "max_retries", "timeout", "backoff")
    return OpenAIJudge(model or DEFAULT_JUDGE_MODELS["openai"], **{k: options[k] for k in keys if k in options})


def _make_hf(model: str | None = None, **options) -> HFJudge:
    from icr.models import load_model

    lm = options.get("lm") or load_model(model or DEFAULT_JUDGE_MODELS["hf"], device=options.get("device", "auto"),
                                         dtype=options.get("dtype", "auto"))
    return HFJudge(lm, batch_size=options.get("batch_size", 4))


def _make_alpaca_eval(model: str | None = None, **options) -> Judge:
    from icr.alpaca_judge import AlpacaEvalJudge

    keys = ("base_url", "api_key_env", "concurrency", "rpm", "max_retries", "timeout", "backoff")
    return AlpacaEvalJudge(model, **{k: options[k] for k in keys if k in options})


DEFAULT_JUDGE_MODELS = {
    "openai": "gpt-4-1106-preview",  # alpaca_eval 2.0's weighted judge, the one its LC GLM was fitted on
    "hf": "embedded:smollm2-135m-instruct",  # offline smoke tests only: far too small to judge well
}
# alpaca_eval: the paper's judge (alpaca_eval's own annotator config and prompt, plus the language
# sentence); openai and hf: our A/B prompt, whose numbers are not comparable with the paper's Table 2.
JUDGES: dict[str, Callable[..., Judge]] = {"alpaca_eval": _make_alpaca_eval, "openai": _make_openai, "hf": _make_hf}
DEFAULT_JUDGE = "alpaca_eval"


def make_judge(backend: str, model: str | None = None, **options) -> Judge:
    """Build a judge from the registry; `options` go to the backend (unknown ones are ignored)."""
    if backend not in JUDGES:
        raise JudgeError(f"unknown judge backend {backend!r}; known: {', '.join(JUDGES)}")
    return JUDGES[backend](model, **options)


# ---------------------------------------------------------------- judging pairs against a reference


@dataclass(frozen=True)
class PairItem:
    """One model output to judge against the reference output for the same instruction."""

    model: str
    lang: str
    id: Any
    instruction: str
    output: str
    reference: str


def _random_order(item: PairItem, seed: int) -> list[bool]:
    """One order from a coin that depends on the seed, the id and the *set* of the two outputs, not
    on which is the model's: swapping model and reference shows the judge the very same prompt."""
    lo, hi = sorted(hashlib.sha256(t.encode("utf-8")).hexdigest() for t in (item.output, item.reference))
    coin = hashlib.sha256(f"{seed}|{item.lang}|{item.id}|{lo}|{hi}".encode()).digest()[0] & 1
    first = lo if coin == 0 else hi
    return [hashlib.sha256(item.output.encode("utf-8")).hexdigest() == first]


ORDERS: dict[str, Callable[[PairItem, int], list[bool]]] = {
    "random": _random_order,  # one judgement per pair (alpaca_eval's protocol)
    "both": lambda item, seed: [False, True],  # both orders, averaged: cancels position bias, 2× cost
}


@dataclass
class PairResult:
    p_model: float | None  # P(model output better); 0.5 = tie; None = no verdict
    n_judgements: int
    rule: str  # 'logprobs', 'sampled', 'mixed', 'identical' or 'none'


def messages_of(judge: Judge) -> Callable[[JudgeRequest], list[dict[str, str]]]:
    """The judge's own prompt builder (`messages`), else the shared A/B prompt."""
    return getattr(judge, "messages", judge_messages)


def judge_pairs(judge: Judge, cache: JudgementCache, items: list[PairItem], order: str = "random", seed: int = 0,
                estimate_only: bool = False) -> tuple[list[PairResult], dict[str, Any]]:
    """Judge every item (cache first), returning one result per item and the run's statistics.

    Before any request the plan is logged: judgements needed, cached, to request, and an estimate
    of the prompt tokens they cost. With `estimate_only`, stop there (results are then None where
    not cached). Identical outputs are ties and cost nothing."""
    if order not in ORDERS:
        raise JudgeError(f"unknown judging order {order!r}; known: {', '.join(ORDERS)}")
    plans: list[list[tuple[str, bool]]] = []
    requests: dict[str, JudgeRequest] = {}
    for item in items:
        plan = []
        if item.output.strip() != item.reference.strip():
            for model_first in ORDERS[order](item, seed):
                pair = (item.output, item.reference) if model_first else (item.reference, item.output)
                req = JudgeRequest(item.instruction, item.lang, *pair)
                key = cache.key(judge.judge_id, messages_of(judge)(req))
                requests.setdefault(key, req)
                plan.append((key, model_first))
        plans.append(plan)
    found = {key: j for key in requests if (j := cache.get(key)) is not None}
    todo = [key for key in requests if key not in found]
    stats = {"judgements": len(requests), "cached": len(found), "requested": len(todo),
             "estimated_prompt_tokens": sum(estimate_tokens(messages_of(judge)(requests[k])) for k in todo),
             "estimated_completion_tokens": len(todo)}
    log.info("judging %d pairs: %d judgements, %d cached, %d to request (≈%d prompt tokens, %d completion tokens)",
             len(items), stats["judgements"], stats["cached"], stats["requested"],
             stats["estimated_prompt_tokens"], stats["estimated_completion_tokens"])
    if todo and not estimate_only:
        stats["rule"] = judge.preflight()

        def on_done(i: int, judgement: Judgement) -> None:
            found[todo[i]] = judgement
            cache.put(todo[i], judge.judge_id, judgement)

        judge.judge_many([requests[k] for k in todo], on_done)
    used = [found[key] for key in requests if key in found]  # what the results rest on, cached or new
    stats["rules"] = sorted({j.rule for j in used})
    stats["served_models"] = sorted({j.served_model for j in used if j.served_model})
    return [_combine(plan, found) for plan in plans], stats


def _combine(plan: list[tuple[str, bool]], found: dict[str, Judgement]) -> PairResult:
    if not plan:
        return PairResult(0.5, 0, "identical")
    probs, rules = [], set()
    for key, model_first in plan:
        j = found.get(key)
        if j is not None and j.p_first is not None:
            probs.append(j.p_first if model_first else 1.0 - j.p_first)
            rules.add(j.rule)
    if not probs:
        return PairResult(None, 0, "none")
    return PairResult(sum(probs) / len(probs), len(probs), rules.pop() if len(rules) == 1 else "mixed")
