"""Pair selection: length-controlled ranking, the α search, filters and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icr.config import PairsConfig
from icr.selection import PAPER_ALPHA_STEP, Candidates, fit_alpha, select_pairs


def make_groups(rng: np.random.Generator, n_prompts: int, sizes=(2, 8), reward_scale=1.0, max_len=400):
    groups = []
    for _ in range(n_prompts):
        n = int(rng.integers(sizes[0], sizes[1] + 1))
        groups.append(Candidates({}, [f"t{i}" for i in range(n)], rng.normal(0, reward_scale, n),
                                 rng.integers(1, max_len, n).astype(float)))
    return groups


def gap_at(alpha: float, groups: list[Candidates]) -> float:
    """Mean len(chosen) − len(rejected) at α, written independently (plain Python, first index wins ties)."""
    total = 0.0
    for g in groups:
        scores = [float(r) - alpha * float(length) for r, length in zip(g.rewards, g.lengths)]
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        worst = min(range(len(scores)), key=lambda i: (scores[i], i))
        total += float(g.lengths[best]) - float(g.lengths[worst])
    return total / len(groups)


def breakpoints(groups: list[Candidates], alpha_max: float) -> list[float]:
    out = []
    for g in groups:
        for i in range(len(g.rewards)):
            for j in range(len(g.rewards)):
                if g.lengths[i] != g.lengths[j]:
                    a = (g.rewards[i] - g.rewards[j]) / (g.lengths[i] - g.lengths[j])
                    if 0 < a < alpha_max:
                        out.append(float(a))
    return out


def brute_force_best(groups, alpha_max=1.0, step=1e-4, with_breakpoints=True) -> float:
    alphas = list(np.arange(0.0, alpha_max, step))
    if with_breakpoints:
        alphas += breakpoints(groups, alpha_max)
    return min(abs(_vector_gap(np.asarray(alphas), groups)))


def _vector_gap(alphas: np.ndarray, groups) -> np.ndarray:
    gap = np.zeros(len(alphas))
    for g in groups:
        scores = g.rewards[None, :] - alphas[:, None] * g.lengths[None, :]
        gap += g.lengths[scores.argmax(1)] - g.lengths[scores.argmin(1)]
    return gap / len(groups)


# ---------------------------------------------------------------- fit_alpha


@pytest.mark.parametrize("seed", range(8))
def test_fit_alpha_beats_brute_force_and_paper_grid(seed):
    rng = np.random.default_rng(seed)
    scale = [0.05, 0.3, 1.0, 3.0][seed % 4]  # small scales put the breakpoints between grid points
    groups = make_groups(rng, int(rng.integers(3, 25)), reward_scale=scale)
    alpha = fit_alpha(groups)
    assert 0.0 <= alpha < 1.0
    ours = abs(gap_at(alpha, groups))
    assert ours == pytest.approx(abs(_vector_gap(np.array([alpha]), groups)[0]), abs=1e-12)
    assert ours <= brute_force_best(groups) + 1e-12
    paper = min(abs(_vector_gap(np.arange(0.0, 1.0, PAPER_ALPHA_STEP), groups)))
    assert ours <= paper + 1e-12


def test_fit_alpha_finds_an_interval_the_paper_grid_steps_over():
    """The only α with zero gap lies strictly between two grid points (0.001 and 0.002)."""
    # g picks the long answer until α = 0.0010005, then the short one (gap +100 → −100);
    # h does the same at α = 0.001. Only inside (0.001, 0.0010005) do the two cancel.
    g = Candidates({}, ["short", "long"], np.array([0.0, 0.10005]), np.array([100.0, 200.0]))
    h = Candidates({}, ["a", "b"], np.array([0.0, 0.1]), np.array([100.0, 200.0]))
    groups = [g, h]
    alpha = fit_alpha(groups)
    grid_best = min(abs(_vector_gap(np.arange(0.0, 1.0, PAPER_ALPHA_STEP), groups)))
    assert grid_best >= 50
    assert 0.001 < alpha < 0.0010005
    assert gap_at(alpha, groups) == 0.0


def test_fit_alpha_zero_when_already_balanced_and_smallest_on_ties():
    # chosen and rejected already have equal lengths at α = 0: α = 0 (the smallest of all ties)
    g = Candidates({}, ["a", "b", "c"], np.array([1.0, 0.0, -1.0]), np.array([10.0, 50.0, 10.0]))
    assert fit_alpha([g]) == 0.0
    assert fit_alpha([]) == 0.0


def test_fit_alpha_counteracts_a_length_bias():
    # longer responses have higher rewards: α > 0 is needed to close the gap
    rng = np.random.default_rng(1)
    groups = []
    for _ in range(30):
        lengths = rng.integers(10, 300, 6).astype(float)
        groups.append(Candidates({}, ["x"] * 6, 0.01 * lengths + rng.normal(0, 0.3, 6), lengths))
    assert _vector_gap(np.array([0.0]), groups)[0] > 50
    alpha = fit_alpha(groups)
    assert alpha > 0
    assert abs(gap_at(alpha, groups)) < abs(gap_at(0.0, groups))


def test_fit_alpha_respects_alpha_max():
    rng = np.random.default_rng(3)
    groups = make_groups(rng, 10, reward_scale=50.0)
    alpha = fit_alpha(groups, alpha_max=0.05)
    assert 0 <= alpha < 0.05
    assert abs(gap_at(alpha, groups)) <= brute_force_best(groups, alpha_max=0.05, step=1e-5) + 1e-12


# ---------------------------------------------------------------- select_pairs


def record(pid, rewards, texts=None, lang="en", lengths=None, **extra):
    texts = texts or [f"response {pid} " + "x" * (5 + 7 * k) for k in range(len(rewards))]
    return {"id": pid, "lang": lang, "prompt": f"prompt {pid}", "prompt_en": f"english {pid}", "responses": texts,
            "reward": list(rewards), "n_tokens": lengths or [len(t) // 3 for t in texts], **extra}


NO_FILTER = dict(language_filter=False)


def test_select_pairs_picks_argmax_and_argmin_of_length_controlled_score():
    rng = np.random.default_rng(7)
    records = [record(str(k), rng.normal(0, 1, 5).tolist(),
                      texts=[f"answer {k}.{i} " + "y" * int(rng.integers(1, 200)) for i in range(5)])
               for k in range(12)]
    cfg = PairsConfig(**NO_FILTER)
    pairs, stats = select_pairs(records, cfg)
    alpha = stats["alpha"]
    assert alpha == fit_alpha([Candidates(r, r["responses"], np.array(r["reward"]),
                                          np.array([len(t) for t in r["responses"]], float)) for r in records])
    by_id = {r["id"]: r for r in records}
    assert len(pairs) == len(records)
    for p in pairs:
        r = by_id[p["id"]]
        s = [rew - alpha * len(t) for rew, t in zip(r["reward"], r["responses"])]
        c, w = int(np.argmax(s)), int(np.argmin(s))
        assert p["chosen"] == [{"role": "assistant", "content": r["responses"][c]}]
        assert p["rejected"] == [{"role": "assistant", "content": r["responses"][w]}]
        assert p["prompt"] == [{"role": "user", "content": r["prompt"]}]
        assert p["reward_chosen"] == r["reward"][c] and p["reward_rejected"] == r["reward"][w]
        assert p["score_chosen"] == pytest.approx(s[c]) and p["score_rejected"] == pytest.approx(s[w])
        assert p["len_chosen"] == len(r["responses"][c]) and p["alpha"] == alpha
        assert p["prompt_en"] == r["prompt_en"] and p["lang"] == "en"


def test_length_control_off_ranks_by_reward_alone():
    # the longest response has the best reward: with length control on it loses, off it wins
    texts = ["short", "a medium length answer", "a very long answer " * 20]
    recs = [record(str(k), [0.0, 0.1, 0.2 + 0.01 * k], texts=[t + str(k) for t in texts]) for k in range(4)]
    pairs_off, stats_off = select_pairs(recs, PairsConfig(length_control=False, **NO_FILTER))
    assert stats_off["alpha"] == 0.0
    assert all(p["chosen"][0]["content"].startswith("a very long") for p in pairs_off)
    assert all(p["rejected"][0]["content"].startswith("short") for p in pairs_off)
    _, stats_on = select_pairs(recs, PairsConfig(length_control=True, **NO_FILTER))
    assert stats_on["alpha"] > 0
    assert abs(stats_on["mean_len_chosen"] - stats_on["mean_len_rejected"]) < abs(
        stats_off["mean_len_chosen"] - stats_off["mean_len_rejected"])


def test_length_unit_tokens_uses_n_tokens():
    recs = [record("a", [0.0, 1.0], texts=["aaaaaaaaaaaaaaaaaaaa", "b"], lengths=[2, 30])]
    pairs, stats = select_pairs(recs, PairsConfig(length_control=False, length_unit="tokens", **NO_FILTER))
    assert stats["length_unit"] == "tokens"
    assert pairs[0]["len_chosen"] == 30 and pairs[0]["len_rejected"] == 2


def test_max_chosen_score_drops_prompts():
    recs = [record("lo", [0.1, 0.5]), record("hi", [0.2, 3.0])]
    pairs, stats = select_pairs(recs, PairsConfig(length_control=False, max_chosen_score=1.0, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["lo"]
    assert stats["dropped"] == {"above_max_chosen_score": 1}
    pairs, _ = select_pairs(recs, PairsConfig(length_control=False, max_chosen_score=None, **NO_FILTER))
    assert len(pairs) == 2


def test_min_margin_and_zero_margin():
    recs = [record("small", [0.0, 0.05]), record("big", [0.0, 1.0]), record("tie", [0.3, 0.3])]
    pairs, stats = select_pairs(recs, PairsConfig(length_control=False, min_margin=0.1, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["big"]
    assert stats["dropped"].get("margin_too_small", 0) + stats["dropped"].get("identical", 0) == 2
    pairs, stats = select_pairs(recs, PairsConfig(length_control=False, min_margin=0.0, drop_identical=False,
                                                  **NO_FILTER))
    assert [p["id"] for p in pairs] == ["small", "big"]  # a zero margin is never a preference
    assert stats["dropped"] == {"margin_too_small": 1}


def test_drop_identical():
    recs = [record("same", [0.0, 1.0], texts=["Same answer.", " Same answer. "]), record("diff", [0.0, 1.0])]
    pairs, stats = select_pairs(recs, PairsConfig(length_control=False, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["diff"] and stats["dropped"] == {"identical": 1}
    pairs, _ = select_pairs(recs, PairsConfig(length_control=False, drop_identical=False, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["same", "diff"]


SPANISH = [
    "La fotosíntesis es el proceso mediante el cual las plantas convierten la luz del sol en energía química.",
    "Las plantas utilizan la luz, el agua y el dióxido de carbono para producir azúcares y liberar oxígeno.",
    "Es un proceso biológico fundamental que ocurre en los cloroplastos de las hojas de las plantas verdes.",
]
ENGLISH_ANSWER = "Photosynthesis is the process by which plants turn sunlight, water and air into sugar and oxygen."


def test_language_filter_drops_an_english_response_among_spanish_ones():
    # the English answer has the best reward: without the filter it would be chosen
    rec = record("p", [0.1, 0.2, 0.3, 5.0], texts=SPANISH + [ENGLISH_ANSWER], lang="es")
    pairs, stats = select_pairs([rec], PairsConfig(length_control=False, language_filter=True))
    assert len(pairs) == 1
    assert pairs[0]["chosen"][0]["content"] == SPANISH[2]
    assert ENGLISH_ANSWER not in (pairs[0]["chosen"][0]["content"], pairs[0]["rejected"][0]["content"])
    assert stats["target_language_share"] == pytest.approx(3 / 4)
    off, stats_off = select_pairs([rec], PairsConfig(length_control=False, language_filter=False))
    assert off[0]["chosen"][0]["content"] == ENGLISH_ANSWER
    assert stats_off["target_language_share"] == pytest.approx(3 / 4)  # counted even when not filtered


def test_language_filter_drops_prompts_left_with_fewer_than_two():
    rec = record("p", [0.1, 0.9], texts=[SPANISH[0], ENGLISH_ANSWER], lang="es")
    pairs, stats = select_pairs([rec], PairsConfig(language_filter=True))
    assert pairs == [] and stats["dropped"] == {"fewer_than_2_in_language": 1}


def test_statistics_are_consistent_with_the_pairs():
    rng = np.random.default_rng(11)
    recs = [record(str(k), rng.normal(0, 1, 4).tolist(),
                   texts=[f"r{k}.{i} " + "z" * int(rng.integers(1, 60)) for i in range(4)]) for k in range(9)]
    recs.append({**record("skip", []), "responses": [], "reward": [], "skipped": "prompt too long"})
    recs.append(record("same", [0.0, 1.0], texts=["dup", "dup"]))
    cfg = PairsConfig(**NO_FILTER)
    pairs, stats = select_pairs(recs, cfg)
    assert stats["prompts"] == len(recs)
    assert stats["pairs"] == len(pairs) == 9
    assert stats["dropped"] == {"skipped_prompt": 1, "identical": 1}
    assert stats["responses"] == 9 * 4 + 2
    assert stats["mean_len_chosen"] == pytest.approx(np.mean([p["len_chosen"] for p in pairs]))
    assert stats["mean_len_rejected"] == pytest.approx(np.mean([p["len_rejected"] for p in pairs]))
    assert stats["mean_reward_chosen"] == pytest.approx(np.mean([p["reward_chosen"] for p in pairs]))
    assert stats["mean_reward_rejected"] == pytest.approx(np.mean([p["reward_rejected"] for p in pairs]))
    assert stats["mean_margin"] == pytest.approx(np.mean([p["score_chosen"] - p["score_rejected"] for p in pairs]))
    assert stats["mean_margin"] > 0
    assert stats["alpha"] == pairs[0]["alpha"]
    assert stats["target_language_share"] <= 1.0


def test_statistics_of_no_pairs_are_nan_not_errors():
    pairs, stats = select_pairs([], PairsConfig())
    assert pairs == [] and stats["pairs"] == 0 and stats["prompts"] == 0
    assert math.isnan(stats["mean_len_chosen"]) and math.isnan(stats["target_language_share"])
