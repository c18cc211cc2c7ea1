"""Pair selection: best and worst response per prompt, with length control (paper §3.2).

Responses are ranked by the length-controlled score s = log π(y|x) − log π_ref(y|x) − α·len(y),
on the paper's scale: the raw log-ratio, without β (released utils/generate_preference_pair.py,
calculate_implicit_reward and add_lc_score), so `alpha_max`, `min_margin` and `max_chosen_score`
mean what the paper's numbers mean whatever `reward.beta` is. Per language, α ≥ 0 is chosen so that
the mean length difference between chosen and rejected responses is as close to zero as possible
(`fit_alpha`). Off-language responses are ranked like any other by default (`language_filter: off`,
as released: a wrong-language rejected response is the signal that teaches the target language).
The output is TRL's conversational preference format (`icr.core.records.TrainingPair`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from icr.config import PairsConfig
from icr.core.errors import DataError
from icr.core.languages import is_in_language
from icr.core.records import RewardRecord, TrainingPair

PAPER_ALPHA_STEP = 0.001


@dataclass
class Candidates:
    """The rankable responses of one prompt: texts, implicit rewards on the paper's scale
    (log π − log π_ref, no β), lengths, and which of them may be chosen (`language_filter: chosen`)."""

    record: RewardRecord | None
    texts: list[str]
    rewards: np.ndarray
    lengths: np.ndarray
    may_choose: np.ndarray | None = None  # bool per response; None: every response
    indices: list[int] | None = None  # positions in record.responses; None: 0..n-1
    in_language: list[bool] | None = None

    def __post_init__(self):
        if self.may_choose is None:
            self.may_choose = np.ones(len(self.texts), dtype=bool)
        if self.indices is None:
            self.indices = list(range(len(self.texts)))
        if self.in_language is None:
            self.in_language = [True] * len(self.texts)

    def chosen_and_rejected(self, scores: np.ndarray) -> tuple[int, int]:
        """argmax over the responses that may be chosen, argmin over all (first index wins ties)."""
        return int(np.where(self.may_choose, scores, -np.inf).argmax()), int(scores.argmin())


def _mean_length_gap(alphas: np.ndarray, groups: list[Candidates]) -> np.ndarray:
    """Mean over prompts of len(chosen) − len(rejected), for each α (vectorised over α).

    Where only some responses may be chosen (`language_filter: chosen`), a prompt whose best
    choosable response is also its worst yields no pair at that α, so it is left out of the mean:
    counting its zero gap would pull α towards leaving prompts without pairs. An α at which no
    prompt yields a pair has an infinite gap."""
    gap, count = np.zeros(len(alphas)), np.zeros(len(alphas))
    for g in groups:
        scores = g.rewards[None, :] - alphas[:, None] * g.lengths[None, :]  # [A, N]
        best = np.where(g.may_choose[None, :], scores, -np.inf).argmax(1)
        worst = scores.argmin(1)
        counted = (best != worst) | bool(g.may_choose.all())
        gap += np.where(counted, g.lengths[best] - g.lengths[worst], 0.0)
        count += counted
    if not groups:
        return gap
    return np.where(count > 0, gap / np.maximum(count, 1), np.inf)  # no pair at all is not balance


def grid_alpha(groups: list[Candidates], alpha_max: float = 1.0) -> float:
    """The released search (utils/generate_preference_pair.py, optimize_alpha): α over
    np.arange(0, alpha_max, 0.001), the first α whose |mean len(chosen) − len(rejected)| is smallest
    (a later α replaces it only when strictly smaller)."""
    if not groups:
        return 0.0
    grid = np.arange(0.0, alpha_max, PAPER_ALPHA_STEP)
    return float(grid[int(np.abs(_mean_length_gap(grid, groups)).argmin())])


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


# pairs.alpha_search → the function that picks α for one language's prompts
ALPHA_SEARCHES = {"grid": grid_alpha, "exact": fit_alpha}


def response_lengths(record: RewardRecord, unit: str) -> np.ndarray:
    if unit == "tokens":
        return np.asarray(record.scored_tokens, dtype=float)
    return np.asarray([len(t) for t in record.responses], dtype=float)


def log_ratios(record: RewardRecord) -> np.ndarray:
    """log π(y|x) − log π_ref(y|x) per response: the implicit reward on the paper's scale (no β)."""
    n = len(record.responses)
    if len(record.logp_policy) != n or len(record.logp_ref) != n:
        raise DataError(f"reward record {record.id!r} has no logp_policy/logp_ref: rerun the reward stage")
    return np.asarray(record.logp_policy, dtype=float) - np.asarray(record.logp_ref, dtype=float)


# Which responses a `pairs.language_filter` setting lets into the ranking, and which may be chosen,
# given whether each is in the prompt's language.
LANGUAGE_FILTERS = {
    "off": lambda in_language: (True, True),
    "chosen": lambda in_language: (True, in_language),
    "all": lambda in_language: (in_language, in_language),
}


def in_language_flags(record: RewardRecord, config: PairsConfig) -> list[bool]:
    """False for each response confidently detected as another language than the record's."""
    return [is_in_language(t, record.lang, config.language_min_confidence) for t in record.responses]


def candidates_for(
    record: RewardRecord, config: PairsConfig, in_language: list[bool] | None = None, language_filter: str | None = None
) -> Candidates | str:
    """The rankable responses of a reward record under `language_filter` (default: the config's),
    or the reason the prompt yields no pair."""
    in_language = in_language_flags(record, config) if in_language is None else in_language
    rule = LANGUAGE_FILTERS[language_filter or config.language_filter]
    scores = log_ratios(record)
    finite = np.isfinite(scores)  # a NaN/inf reward ranks nothing
    keep, choosable = [], []
    for i, ok in enumerate(in_language):
        ranked, may_choose = rule(ok)
        if finite[i] and ranked:
            keep.append(i)
            choosable.append(bool(may_choose))
    if len(keep) < 2:
        broken = not finite.all() and finite.sum() < 2  # NaN/inf rewards left too few to rank
        return "fewer_than_2_finite_rewards" if broken else "fewer_than_2_in_language"
    if not any(choosable):
        return "no_in_language_response_to_choose"
    lengths = response_lengths(record, config.length_unit)
    return Candidates(
        record,
        [record.responses[i] for i in keep],
        scores[keep],
        lengths[keep],
        np.asarray(choosable),
        keep,
        [in_language[i] for i in keep],
    )


def _pair(g: Candidates, c: int, r: int, scores: np.ndarray, alpha: float) -> TrainingPair:
    """Response c of `g` chosen over response r, with the log-ratios, rewards, scores and lengths behind it."""
    rec = g.record
    reward = rec.reward
    return TrainingPair(
        rec.id,
        rec.lang,
        rec.prompt,
        g.texts[c],
        g.texts[r],
        rec.prompt_en,
        {
            "log_ratio_chosen": float(g.rewards[c]),
            "log_ratio_rejected": float(g.rewards[r]),
            "reward_chosen": float(reward[g.indices[c]]) if reward else float("nan"),
            "reward_rejected": float(reward[g.indices[r]]) if reward else float("nan"),
            "score_chosen": float(scores[c]),
            "score_rejected": float(scores[r]),
            "len_chosen": float(g.lengths[c]),
            "len_rejected": float(g.lengths[r]),
            "chosen_in_language": bool(g.in_language[c]),
            "rejected_in_language": bool(g.in_language[r]),
            "alpha": alpha,
        },
    )


def _selection(
    records: list[RewardRecord], flags: list[list[bool] | None], config: PairsConfig, language_filter: str
) -> tuple[list[TrainingPair], Counter, float, int]:
    """Pairs, drop reasons, α and response count under one `language_filter` setting."""
    drops: Counter = Counter()
    n_responses = 0
    groups = []
    for record, in_language in zip(records, flags):
        if record.skipped:
            drops["skipped_prompt"] += 1
            continue
        n_responses += len(record.responses)
        cand = candidates_for(record, config, in_language, language_filter)
        if isinstance(cand, str):
            drops[cand] += 1
        else:
            groups.append(cand)
    alpha = ALPHA_SEARCHES[config.alpha_search](groups, config.alpha_max) if config.length_control else 0.0
    pairs = []
    for g in groups:
        scores = g.rewards - alpha * g.lengths
        c, r = g.chosen_and_rejected(scores)
        margin = float(scores[c] - scores[r])
        if config.drop_identical and c != r and g.texts[c].strip() == g.texts[r].strip():
            drops["identical"] += 1
        elif config.max_chosen_score is not None and scores[c] > config.max_chosen_score:
            drops["above_max_chosen_score"] += 1
        elif margin < config.min_margin or margin <= 0:
            drops["margin_too_small"] += 1
        else:
            pairs.append(_pair(g, c, r, scores, alpha))
    return pairs, drops, alpha, n_responses


def differing_pairs(a: list[TrainingPair], b: list[TrainingPair]) -> int:
    """Prompts whose pair differs between two selections: present in one only, or with another
    chosen or rejected text."""
    left, right = {p.id: (p.chosen, p.rejected) for p in a}, {p.id: (p.chosen, p.rejected) for p in b}
    return sum(left.get(i) != right.get(i) for i in set(left) | set(right))


def select_pairs(records: list[RewardRecord], config: PairsConfig) -> tuple[list[TrainingPair], dict]:
    """Preference pairs and statistics for one language's reward records. The statistics also say
    how many pairs the paper's setting (`language_filter: off`) and the filter on both sides
    (`all`) would select differently on these records."""
    flags = [None if r.skipped else in_language_flags(r, config) for r in records]
    n_off = sum(f.count(False) for f in flags if f is not None)
    by_setting = {s: _selection(records, flags, config, s) for s in {config.language_filter, "off", "all"}}
    pairs, drops, alpha, n_responses = by_setting[config.language_filter]
    stats = pair_statistics(pairs, len(records), n_responses, n_off, alpha, drops, config.length_unit)
    stats["language_filter"] = config.language_filter
    stats["language_filter_effect"] = {
        "pairs_off": len(by_setting["off"][0]),
        "pairs_all": len(by_setting["all"][0]),
        "differing_pairs_off_vs_all": differing_pairs(by_setting["off"][0], by_setting["all"][0]),
    }
    return pairs, stats


def pair_statistics(pairs: list[TrainingPair], n_prompts, n_responses, n_off, alpha, drops, unit) -> dict:
    def mean(key):
        return float(np.mean([p.scores[key] for p in pairs])) if pairs else float("nan")

    return {
        "prompts": n_prompts,
        "pairs": len(pairs),
        "dropped": dict(drops),
        "alpha": alpha,
        "alpha_units": f"nats of log π − log π_ref per {unit[:-1]} (no β)",
        "length_unit": unit,
        "mean_len_chosen": mean("len_chosen"),
        "mean_len_rejected": mean("len_rejected"),
        "mean_margin": float(np.mean([p.scores["score_chosen"] - p.scores["score_rejected"] for p in pairs]))
        if pairs
        else float("nan"),
        "mean_log_ratio_chosen": mean("log_ratio_chosen"),
        "mean_log_ratio_rejected": mean("log_ratio_rejected"),
        "mean_reward_chosen": mean("reward_chosen"),
        "mean_reward_rejected": mean("reward_rejected"),
        "responses": n_responses,
        "target_language_share": 1 - n_off / n_responses if n_responses else float("nan"),
        "off_language_chosen": sum(not p.scores["chosen_in_language"] for p in pairs),
        "off_language_rejected": sum(not p.scores["rejected_in_language"] for p in pairs),
    }
