"""Pair selection: length-controlled ranking, the α search, filters and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import select_json
from icr.config import PairsConfig
from icr.engines.selection import PAPER_ALPHA_STEP, Candidates, fit_alpha, grid_alpha


def make_groups(rng: np.random.Generator, n_prompts: int, sizes=(2, 8), reward_scale=1.0, max_len=400):
    groups = []
    for _ in range(n_prompts):
        n = int(rng.integers(sizes[0], sizes[1] + 1))
        groups.append(
            Candidates(
                {},
                [f"t{i}" for i in range(n)],
                rng.normal(0, reward_scale, n),
                rng.integers(1, max_len, n).astype(float),
            )
        )
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


BETA = 0.1


def record(pid, log_ratios, texts=None, lang="en", lengths=None, **extra):
    """A reward record whose responses have these log π − log π_ref (reward = β × that, β = 0.1)."""
    texts = texts or [f"response {pid} " + "x" * (5 + 7 * k) for k in range(len(log_ratios))]
    logp_ref = [-50.0 - 3 * k for k in range(len(log_ratios))]
    return {
        "id": pid,
        "lang": lang,
        "prompt": f"prompt {pid}",
        "prompt_en": f"english {pid}",
        "responses": texts,
        "logp_policy": [lr + ref for lr, ref in zip(log_ratios, logp_ref)],
        "logp_ref": logp_ref,
        "reward": [BETA * lr for lr in log_ratios],
        "n_tokens": lengths or [len(t) // 3 for t in texts],
        **extra,
    }


def log_ratio(rec) -> list[float]:
    return [a - b for a, b in zip(rec["logp_policy"], rec["logp_ref"])]


NO_FILTER = dict(language_filter="off")


def random_records(seed: int, prompts: int, responses: int, max_chars: int, label: str, filler: str) -> list[dict]:
    """`prompts` reward records of `responses` N(0, 1) rewards each, with texts of random length."""
    rng = np.random.default_rng(seed)
    return [
        record(
            str(k),
            rng.normal(0, 1, responses).tolist(),
            texts=[f"{label}{k}.{i} " + filler * int(rng.integers(1, max_chars)) for i in range(responses)],
        )
        for k in range(prompts)
    ]


def test_select_pairs_picks_argmax_and_argmin_of_length_controlled_score():
    records = random_records(seed=7, prompts=12, responses=5, max_chars=200, label="answer ", filler="y")
    cfg = PairsConfig(**NO_FILTER)
    pairs, stats = select_json(records, cfg)
    alpha = stats["alpha"]
    # α is fitted on the paper's scale: the raw log-ratio, not the β-scaled reward
    assert alpha == fit_alpha(
        [
            Candidates(r, r["responses"], np.array(log_ratio(r)), np.array([len(t) for t in r["responses"]], float))
            for r in records
        ]
    )
    by_id = {r["id"]: r for r in records}
    assert len(pairs) == len(records)
    for p in pairs:
        r = by_id[p["id"]]
        s = [lr - alpha * len(t) for lr, t in zip(log_ratio(r), r["responses"])]
        c, w = int(np.argmax(s)), int(np.argmin(s))
        assert p["chosen"] == [{"role": "assistant", "content": r["responses"][c]}]
        assert p["rejected"] == [{"role": "assistant", "content": r["responses"][w]}]
        assert p["prompt"] == [{"role": "user", "content": r["prompt"]}]
        assert p["reward_chosen"] == r["reward"][c] and p["reward_rejected"] == r["reward"][w]
        assert p["log_ratio_chosen"] == pytest.approx(log_ratio(r)[c])
        assert p["score_chosen"] == pytest.approx(s[c]) and p["score_rejected"] == pytest.approx(s[w])
        assert p["len_chosen"] == len(r["responses"][c]) and p["alpha"] == alpha
        assert p["prompt_en"] == r["prompt_en"] and p["lang"] == "en"


def test_length_control_off_ranks_by_reward_alone():
    # the longest response has the best reward: with length control on it loses, off it wins
    texts = ["short", "a medium length answer", "a very long answer " * 20]
    recs = [record(str(k), [0.0, 0.1, 0.2 + 0.01 * k], texts=[t + str(k) for t in texts]) for k in range(4)]
    pairs_off, stats_off = select_json(recs, PairsConfig(length_control=False, **NO_FILTER))
    assert stats_off["alpha"] == 0.0
    assert all(p["chosen"][0]["content"].startswith("a very long") for p in pairs_off)
    assert all(p["rejected"][0]["content"].startswith("short") for p in pairs_off)
    _, stats_on = select_json(recs, PairsConfig(length_control=True, **NO_FILTER))
    assert stats_on["alpha"] > 0
    assert abs(stats_on["mean_len_chosen"] - stats_on["mean_len_rejected"]) < abs(
        stats_off["mean_len_chosen"] - stats_off["mean_len_rejected"]
    )


def test_length_unit_tokens_uses_n_tokens():
    recs = [record("a", [0.0, 1.0], texts=["aaaaaaaaaaaaaaaaaaaa", "b"], lengths=[2, 30])]
    pairs, stats = select_json(recs, PairsConfig(length_control=False, length_unit="tokens", **NO_FILTER))
    assert stats["length_unit"] == "tokens"
    assert pairs[0]["len_chosen"] == 30 and pairs[0]["len_rejected"] == 2


def test_alpha_means_the_same_whatever_beta():
    """The same log-ratios under two β give the same α and pairs: α is in the paper's units."""
    rng = np.random.default_rng(5)
    recs = []
    for k in range(10):  # longer answers get higher log-ratios: length control needs α > 0
        texts = [f"a{k}.{i} " + "q" * int(rng.integers(1, 300)) for i in range(5)]
        recs.append(record(str(k), [0.05 * len(t) + rng.normal(0, 1) for t in texts], texts=texts))
    rescaled = [{**r, "reward": [10 * x for x in r["reward"]]} for r in recs]  # β = 1 instead of 0.1
    a, stats_a = select_json(recs, PairsConfig(**NO_FILTER))
    b, stats_b = select_json(rescaled, PairsConfig(**NO_FILTER))
    assert stats_a["alpha"] == stats_b["alpha"] > 0.01
    assert [p["chosen"] for p in a] == [p["chosen"] for p in b]
    lengths = [np.array([len(t) for t in r["responses"]], float) for r in recs]
    on_rewards = fit_alpha([Candidates(r, r["responses"], np.array(r["reward"]), n) for r, n in zip(recs, lengths)])
    assert on_rewards < stats_a["alpha"] / 5  # what fitting on β-scaled rewards gave: α in other units


def test_missing_log_probabilities_are_an_error():
    rec = record("a", [0.0, 1.0])
    del rec["logp_ref"]
    with pytest.raises(ValueError, match="logp_policy/logp_ref"):
        select_json([rec], PairsConfig(**NO_FILTER))


def test_max_chosen_score_drops_prompts():
    # the score is in nats of log π − log π_ref (the reward, β = 0.1, would be 10× smaller)
    recs = [record("lo", [0.1, 0.5]), record("hi", [0.2, 3.0])]
    pairs, stats = select_json(recs, PairsConfig(length_control=False, max_chosen_score=1.0, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["lo"]
    assert stats["dropped"] == {"above_max_chosen_score": 1}
    pairs, _ = select_json(recs, PairsConfig(length_control=False, max_chosen_score=None, **NO_FILTER))
    assert len(pairs) == 2


def test_min_margin_and_zero_margin():
    recs = [record("small", [0.0, 0.05]), record("big", [0.0, 1.0]), record("tie", [0.3, 0.3])]
    pairs, stats = select_json(recs, PairsConfig(length_control=False, min_margin=0.1, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["big"]
    assert stats["dropped"].get("margin_too_small", 0) + stats["dropped"].get("identical", 0) == 2
    pairs, stats = select_json(
        recs, PairsConfig(length_control=False, min_margin=0.0, drop_identical=False, **NO_FILTER)
    )
    assert [p["id"] for p in pairs] == ["small", "big"]  # a zero margin is never a preference
    assert stats["dropped"] == {"margin_too_small": 1}


def test_drop_identical():
    recs = [record("same", [0.0, 1.0], texts=["Same answer.", " Same answer. "]), record("diff", [0.0, 1.0])]
    pairs, stats = select_json(recs, PairsConfig(length_control=False, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["diff"] and stats["dropped"] == {"identical": 1}
    pairs, _ = select_json(recs, PairsConfig(length_control=False, drop_identical=False, **NO_FILTER))
    assert [p["id"] for p in pairs] == ["same", "diff"]


SPANISH = [
    "La fotosíntesis es el proceso mediante el cual las plantas convierten la luz del sol en energía química.",
    "Las plantas utilizan la luz, el agua y el dióxido de carbono para producir azúcares y liberar oxígeno.",
    "Es un proceso biológico fundamental que ocurre en los cloroplastos de las hojas de las plantas verdes.",
]
ENGLISH_ANSWER = "Photosynthesis is the process by which plants turn sunlight, water and air into sugar and oxygen."


def test_language_filter_default_is_off_as_released():
    assert PairsConfig().language_filter == "off"


def texts_of(pair) -> tuple[str, str]:
    return pair["chosen"][0]["content"], pair["rejected"][0]["content"]


def test_language_filter_settings_on_an_english_response_among_spanish_ones():
    best = record("best", [0.1, 0.2, 0.3, 5.0], texts=SPANISH + [ENGLISH_ANSWER], lang="es")  # English ranks first
    worst = record("worst", [0.1, 0.2, 0.3, -5.0], texts=SPANISH + [ENGLISH_ANSWER], lang="es")  # ... or last
    cfg = dict(length_control=False)
    off, stats_off = select_json([best, worst], PairsConfig(language_filter="off", **cfg))
    assert [texts_of(p) for p in off] == [(ENGLISH_ANSWER, SPANISH[0]), (SPANISH[2], ENGLISH_ANSWER)]
    assert stats_off["off_language_chosen"] == 1 and stats_off["off_language_rejected"] == 1
    chosen, stats_chosen = select_json([best, worst], PairsConfig(language_filter="chosen", **cfg))
    # never chosen, still rejected: the pair that teaches the target language is kept
    assert [texts_of(p) for p in chosen] == [(SPANISH[2], SPANISH[0]), (SPANISH[2], ENGLISH_ANSWER)]
    assert stats_chosen["off_language_chosen"] == 0 and stats_chosen["off_language_rejected"] == 1
    filtered, stats_all = select_json([best, worst], PairsConfig(language_filter="all", **cfg))
    assert [texts_of(p) for p in filtered] == [(SPANISH[2], SPANISH[0]), (SPANISH[2], SPANISH[0])]
    assert stats_all["off_language_chosen"] == stats_all["off_language_rejected"] == 0
    for stats in (stats_off, stats_chosen, stats_all):
        assert stats["target_language_share"] == pytest.approx(6 / 8)  # counted whatever the setting
        # both prompts' pairs differ between off and all, whichever setting ran
        assert stats["language_filter_effect"] == {"pairs_off": 2, "pairs_all": 2, "differing_pairs_off_vs_all": 2}


def test_language_filter_effect_counts_pairs_present_in_one_selection_only():
    lost = record("lost", [0.1, 0.9], texts=[SPANISH[0], ENGLISH_ANSWER], lang="es")  # 1 left under 'all'
    same = record("same", [0.1, 0.9], texts=SPANISH[:2], lang="es")
    _, stats = select_json([lost, same], PairsConfig(length_control=False))
    assert stats["language_filter_effect"] == {"pairs_off": 2, "pairs_all": 1, "differing_pairs_off_vs_all": 1}


def test_language_filter_all_drops_prompts_left_with_fewer_than_two():
    rec = record("p", [0.1, 0.9], texts=[SPANISH[0], ENGLISH_ANSWER], lang="es")
    pairs, stats = select_json([rec], PairsConfig(language_filter="all"))
    assert pairs == [] and stats["dropped"] == {"fewer_than_2_in_language": 1}
    pairs, stats = select_json([rec], PairsConfig(language_filter="chosen", length_control=False))
    assert pairs == [] and stats["dropped"] == {"margin_too_small": 1}  # only choosable one is also the worst
    rec = record("p", [0.9, 0.1], texts=[SPANISH[0], ENGLISH_ANSWER], lang="es")
    pairs, _ = select_json([rec], PairsConfig(language_filter="chosen"))
    assert texts_of(pairs[0]) == (SPANISH[0], ENGLISH_ANSWER)


def test_language_filter_chosen_drops_prompts_with_nothing_in_language():
    rec = record("p", [0.1, 0.9], texts=[ENGLISH_ANSWER, ENGLISH_ANSWER + " Really."], lang="es")
    pairs, stats = select_json([rec], PairsConfig(language_filter="chosen"))
    assert pairs == [] and stats["dropped"] == {"no_in_language_response_to_choose": 1}


def test_statistics_are_consistent_with_the_pairs():
    recs = random_records(seed=11, prompts=9, responses=4, max_chars=60, label="r", filler="z")
    recs.append({**record("skip", []), "responses": [], "reward": [], "skipped": "prompt too long"})
    recs.append(record("same", [0.0, 1.0], texts=["dup", "dup"]))
    cfg = PairsConfig(**NO_FILTER)
    pairs, stats = select_json(recs, cfg)
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
    pairs, stats = select_json([], PairsConfig())
    assert pairs == [] and stats["pairs"] == 0 and stats["prompts"] == 0
    assert math.isnan(stats["mean_len_chosen"]) and math.isnan(stats["target_language_share"])


# ---------------------------------------------------------------- alpha_search: grid


def released_optimize_alpha(scores, lengths, alpha_range=(0.0, 1.0, 0.001)):
    """A copy of the released loop (utils/generate_preference_pair.py, optimize_alpha and the
    argmax/argmin of generate_lc_dpo_pair), on lists, as the authors ran it."""
    best_alpha, min_avg_diff = 0.0, float("inf")
    for alpha in np.arange(*alpha_range):
        adjusted = [[s - alpha * n for s, n in zip(ss, ns)] for ss, ns in zip(scores, lengths)]
        chosen = [np.argmax(sub) for sub in adjusted]
        reject = [np.argmin(sub) for sub in adjusted]
        avg = np.mean([ns[c] - ns[r] for c, r, ns in zip(chosen, reject, lengths)])
        if abs(avg) < abs(min_avg_diff):
            min_avg_diff, best_alpha = avg, alpha
    adjusted = [[s - best_alpha * n for s, n in zip(ss, ns)] for ss, ns in zip(scores, lengths)]
    return best_alpha, [(int(np.argmax(sub)), int(np.argmin(sub))) for sub in adjusted]


@pytest.mark.parametrize("seed", range(4))
def test_grid_search_picks_the_released_alpha_and_pairs(tmp_path, seed):
    from icr.core.io import read_jsonl, write_jsonl_atomic

    path = tmp_path / "rewards.jsonl"  # a fixed reward file, read back as the pairs stage reads it
    write_jsonl_atomic(path, random_records(seed, prompts=30, responses=10, max_chars=400, label="r ", filler="z"))
    records = read_jsonl(path)
    alpha, chosen_rejected = released_optimize_alpha(
        [log_ratio(r) for r in records], [[len(t) for t in r["responses"]] for r in records]
    )
    pairs, stats = select_json(records, PairsConfig(alpha_search="grid", **NO_FILTER))
    assert stats["alpha"] == pytest.approx(float(alpha), abs=1e-15)
    assert len(pairs) == len(records)
    for p, r, (c, w) in zip(pairs, records, chosen_rejected):
        assert p["chosen"][-1]["content"] == r["responses"][c]
        assert p["rejected"][-1]["content"] == r["responses"][w]


def test_grid_search_keeps_the_grid_point_where_exact_finds_a_better_alpha():
    """The only zero-gap α lies strictly between 0.001 and 0.002: `exact` finds it, `grid` (the
    released search) keeps the first grid α with the smallest gap, as the released loop does."""
    g = Candidates({}, ["short", "long"], np.array([0.0, 0.10005]), np.array([100.0, 200.0]))
    h = Candidates({}, ["a", "b"], np.array([0.0, 0.1]), np.array([100.0, 200.0]))
    released, _ = released_optimize_alpha([list(x.rewards) for x in (g, h)], [list(x.lengths) for x in (g, h)])
    assert grid_alpha([g, h]) == float(released)
    assert grid_alpha([g, h]) != fit_alpha([g, h])
    assert abs(gap_at(fit_alpha([g, h]), [g, h])) < abs(gap_at(grid_alpha([g, h]), [g, h]))
