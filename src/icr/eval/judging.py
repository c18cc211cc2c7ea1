"""Judging model outputs against reference outputs: the order each pair is shown in, the cache
first, the plan logged before any request, and one result per (model, language, id)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icr.eval.judges.base import Judge, JudgeError, Judgement, JudgeRequest, estimate_tokens
from icr.eval.judges.cache import JudgementCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairItem:
    """One model output to judge against the reference output for the same instruction."""

    model: str
    lang: str
    id: Any
    instruction: str
    output: str
    reference: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.lang, str(self.id)


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


def judge_pairs(
    judge: Judge,
    cache: JudgementCache,
    items: list[PairItem],
    order: str = "random",
    seed: int = 0,
    estimate_only: bool = False,
) -> tuple[dict[tuple[str, str, str], PairResult], dict[str, Any]]:
    """Judge every item (cache first), returning the results keyed by `PairItem.key` (model,
    language, id) and the run's statistics.

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
                key = cache.key(judge.judge_id, judge.messages(req))
                requests.setdefault(key, req)
                plan.append((key, model_first))
        plans.append(plan)
    found = {key: j for key in requests if (j := cache.get(key)) is not None}
    todo = [key for key in requests if key not in found]
    stats = {
        "judgements": len(requests),
        "cached": len(found),
        "requested": len(todo),
        "estimated_prompt_tokens": sum(estimate_tokens(judge.messages(requests[k])) for k in todo),
        "estimated_completion_tokens": len(todo),
    }
    log.info(
        "judging %d pairs: %d judgements, %d cached, %d to request (≈%d prompt tokens, %d completion tokens)",
        len(items),
        stats["judgements"],
        stats["cached"],
        stats["requested"],
        stats["estimated_prompt_tokens"],
        stats["estimated_completion_tokens"],
    )
    if todo and not estimate_only:
        stats["rule"] = judge.preflight()

        def on_done(i: int, judgement: Judgement) -> None:
            found[todo[i]] = judgement
            cache.put(todo[i], judge.judge_id, judgement)

        judge.judge_many([requests[k] for k in todo], on_done)
    used = [found[key] for key in requests if key in found]  # what the results rest on, cached or new
    stats["rules"] = sorted({j.rule for j in used})
    stats["served_models"] = sorted({j.served_model for j in used if j.served_model})
    return {item.key: _combine(plan, found) for item, plan in zip(items, plans)}, stats


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
