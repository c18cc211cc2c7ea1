"""Pair selection: best and worst response per prompt, with length control (paper §3.2).

Responses are ranked by the length-controlled score s = r − α·len(y). Per language, α ≥ 0 is
chosen so that the mean length difference between chosen and rejected responses is as close to
zero as possible (`fit_alpha`). The output is TRL's conversational preference format
(`icr.records.TrainingPair`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from icr.config import PairsConfig
from icr.languages import is_in_language
from icr.records import TrainingPair

PAPER_ALPHA_STEP = 0.001


@dataclass
class Candidates:
    """The valid responses of one prompt: texts, rewards, lengths."""

    record: dict
    texts: list[str]
    rewards: np.ndarray
    lengths: np.ndarray


def _mean_length_gap(alphas: np.ndarray, groups: list[Candidates]) -> np.ndarray:
    """Mean over prompts of len(chosen) − len(rejected), for each α (vectorised over α)."""
    gap = np.zeros(len(alphas))
    for g in groups:
        scores = g.rewards[None, :] - alphas[:, None] * g.lengths[None, :]  # [A, N]
        gap += g.lengths[scores.argmax(1)] - g.lengths[scores.argmin(1)]
    return gap / max(len(groups), 1)


def fit_alpha(groups: list[Candidates], alpha_max: float = 1.0) -> float:
    """α in [0, alpha_max) minimising |mean len(chosen) − mean len(rejected)|; ties → smallest α.

    The paper scans α on a grid of step 0.001. The chosen/rejected indices only change where two
    responses of a prompt swap order, at α = (r_i − r_j)/(ℓ_i − ℓ_j): the gap is piecewise constant
    between these breakpoints. We evaluate the paper's grid *and* one point inside every interval
    between breakpoints, so every value the gap takes on [0, alpha_max) is seen: the answer is the
    grid's choice or a strictly better α the grid stepped over."""
    if not groups:
        return 0.0
    breakpoints = []
    for g in groups:
        dr = g.rewards[:, None] - g.rewards[None, :]
        dl = g.lengths[:, None] - g.lengths[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = dr / dl
        breakpoints.append(a[(dl != 0) & (a > 0) & (a < alpha_max)])
    edges = np.unique(np.concatenate([[0.0, alpha_max], *breakpoints]))
    inner = (edges[:-1] + edges[1:]) / 2
    grid = np.arange(0.0, alpha_max, PAPER_ALPHA_STEP)
    candidates = np.unique(np.concatenate([grid, inner, edges[:-1]]))
    best_alpha, best_gap = 0.0, np.inf
    for start in range(0, len(candidates), 512):
        chunk = candidates[start : start + 512]
        gaps = np.abs(_mean_length_gap(chunk, groups))
        k = int(gaps.argmin())
        if gaps[k] < best_gap - 1e-12:
            best_alpha, best_gap = float(chunk[k]), float(gaps[k])
    return best_alpha


def response_lengths(record: dict, unit: str) -> np.ndarray:
    if unit == "tokens":
        return np.asarray(record["n_tokens"], dtype=float)
    return np.asarray([len(t) for t in record["responses"]], dtype=float)


def candidates_for(record: dict, config: PairsConfig) -> tuple[Candidates | str, int]:
    """Valid responses of a reward record (language filter applied if on), or the reason it has
    fewer than two, and how many responses were off-language."""
    in_lang = [is_in_language(t, record["lang"], config.language_min_confidence) for t in record["responses"]]
    off = in_lang.count(False)  # counted for the statistics even when the filter is off
    rewards = np.asarray(record["reward"], dtype=float)
    finite = np.isfinite(rewards)  # a NaN/inf reward ranks nothing
    keep = [i for i in range(len(in_lang)) if finite[i] and (in_lang[i] or not config.language_filter)]
    if len(keep) < 2:
        broken = not finite.all() and finite.sum() < 2  # NaN/inf rewards left too few to rank
        return ("fewer_than_2_finite_rewards" if broken else "fewer_than_2_in_language"), off
    lengths = response_lengths(record, config.length_unit)
    return Candidates(record, [record["responses"][i] for i in keep], rewards[keep], lengths[keep]), off


def training_pair(g: Candidates, c: int, r: int, scores: np.ndarray, alpha: float) -> TrainingPair:
    """Response c of `g` chosen over response r, with the rewards, scores and lengths behind it."""
    rec = g.record
    return TrainingPair(rec["id"], rec["lang"], rec["prompt"], g.texts[c], g.texts[r], rec.get("prompt_en"), {
        "reward_chosen": float(g.rewards[c]), "reward_rejected": float(g.rewards[r]),
        "score_chosen": float(scores[c]), "score_rejected": float(scores[r]),
        "len_chosen": float(g.lengths[c]), "len_rejected": float(g.lengths[r]), "alpha": alpha})


def select_pairs(records: list[dict], config: PairsConfig) -> tuple[list[dict], dict]:
    """Preference pairs and statistics for one language's reward records."""
    drops: Counter = Counter()
    n_responses = n_off = 0
    groups = []
    for record in records:
        if record.get("skipped"):
            drops["skipped_prompt"] += 1
            continue
        n_responses += len(record["responses"])
        cand, off = candidates_for(record, config)
        n_off += off
        if isinstance(cand, str):
            drops[cand] += 1
        else:
            groups.append(cand)
    alpha = fit_alpha(groups, config.alpha_max) if config.length_control else 0.0
    pairs = []
    for g in groups:
        scores = g.rewards - alpha * g.lengths
        c, r = int(scores.argmax()), int(scores.argmin())
        margin = float(scores[c] - scores[r])
        if config.drop_identical and c != r and g.texts[c].strip() == g.texts[r].strip():
            drops["identical"] += 1
        elif config.max_chosen_score is not None and scores[c] > config.max_chosen_score:
            drops["above_max_chosen_score"] += 1
        elif margin < config.min_margin or margin == 0:
            drops["margin_too_small"] += 1
        else:
            pairs.append(training_pair(g, c, r, scores, alpha).to_json())
    stats = pair_statistics(pairs, len(records), n_responses, n_off, alpha, drops, config.length_unit)
    return pairs, stats


def pair_statistics(pairs, n_prompts, n_responses, n_off, alpha, drops, unit) -> dict:
    def mean(key):
        return float(np.mean([p[key] for p in pairs])) if pairs else float("nan")

    return {
        "prompts": n_prompts,
        "pairs": len(pairs),
        "dropped": dict(drops),
        "alpha": alpha,
        "length_unit": unit,
        "mean_len_chosen": mean("len_chosen"),
        "mean_len_rejected": mean("len_rejected"),
        "mean_margin": float(np.mean([p["score_chosen"] - p["score_rejected"] for p in pairs])) if pairs else
        float("nan"),
        "mean_reward_chosen": mean("reward_chosen"),
        "mean_reward_rejected": mean("reward_rejected"),
        "responses": n_responses,
        "target_language_share": 1 - n_off / n_responses if n_responses else float("nan"),
    }
