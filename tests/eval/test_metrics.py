"""Metrics: win rate and SE as alpaca_eval computes them, and the length-controlled win rate held
to alpaca_eval's own `get_length_controlled_winrate` (1e-6) on the same annotations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from icr.eval import metrics
from icr.eval.metrics import ALPACA_EVAL_SIZE, LCUnavailable

N = ALPACA_EVAL_SIZE


def make_annotations(n: int = N, seed: int = 1) -> pd.DataFrame:
    """Annotations where longer model outputs tend to win, with ties and one missing verdict."""
    rng = np.random.default_rng(seed)
    len_ref, len_model = rng.integers(200, 3000, n), rng.integers(50, 4000, n)
    pref = 1 + 1 / (1 + np.exp(-((len_model - len_ref) / 1000 + rng.normal(size=n))))
    pref[rng.random(n) < 0.05] = 1.5
    pref[3] = np.nan
    return pd.DataFrame(
        {
            "id": np.arange(1, n + 1),
            "output_1": ["r" * k for k in len_ref],
            "output_2": ["m" * k for k in len_model],
            "generator_1": "reference",
            "generator_2": "model",
            "preference": pref,
        }
    )


ALPACA_EVAL_WARNINGS = pytest.mark.filterwarnings("ignore::FutureWarning")  # sklearn deprecations in alpaca_eval


def alpaca_eval_lc(annotations: pd.DataFrame, gamed_csv, monkeypatch) -> dict:
    """alpaca_eval's own computation, its Hub download pointed at the local table."""
    glm = metrics._glm_module()
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(gamed_csv))
    return glm.get_length_controlled_winrate(
        annotations.drop(columns=["id"]).reset_index(drop=True), save_weights_dir=None, is_warn_extreme_changes=False
    )


def test_head_to_head_matches_alpaca_eval_and_counts_ties_as_half():
    from alpaca_eval.metrics import get_winrate

    ann = make_annotations(200)
    ours, theirs = metrics.head_to_head(ann["preference"]), get_winrate(ann)
    assert ours["win_rate"] == pytest.approx(theirs["win_rate"], abs=1e-9)
    assert ours["standard_error"] == pytest.approx(theirs["standard_error"], abs=1e-9)
    assert (ours["n_wins"], ours["n_draws"], ours["n_pairs"]) == (
        theirs["n_wins"],
        theirs["n_draws"],
        theirs["n_total"],
    )
    assert ours["n_invalid"] == 1
    simple = metrics.head_to_head([2.0, 1.0, 1.5, 0, float("nan")])  # win, loss, tie, legacy tie, no verdict
    assert simple["win_rate"] == 50.0 and simple["n_draws"] == 2 and simple["n_pairs"] == 4


@ALPACA_EVAL_WARNINGS
def test_length_controlled_agrees_with_alpaca_eval(gamed_csv, monkeypatch):
    ann = make_annotations()
    ours = metrics.length_controlled(ann, metrics.load_gamed_table(gamed_csv))
    theirs = alpaca_eval_lc(ann, gamed_csv, monkeypatch)
    assert abs(ours["lc_win_rate"] - theirs["length_controlled_winrate"]) < 1e-6
    assert abs(ours["lc_standard_error"] - theirs["lc_standard_error"]) < 1e-6
    assert ours["lc_scope"] == "full"
    # the model wins by being longer: controlling for length must pull its win rate down
    assert ours["lc_win_rate"] < metrics.head_to_head(ann["preference"])["win_rate"] - 2


@ALPACA_EVAL_WARNINGS
def test_length_controlled_on_a_prefix_subset_agrees_and_is_marked(gamed_csv, monkeypatch):
    ann = make_annotations(120, seed=2)
    ours = metrics.length_controlled(ann, metrics.load_gamed_table(gamed_csv))
    theirs = alpaca_eval_lc(ann, gamed_csv, monkeypatch)  # alpaca_eval: position k ↔ id k + 1
    assert abs(ours["lc_win_rate"] - theirs["length_controlled_winrate"]) < 1e-6
    assert ours["lc_scope"] == "subset (120 of 805)"


@pytest.mark.parametrize(
    "ids, message",
    [
        (list(range(2, 12)) + [900], "within 1..805"),
        ([5, 4, 3, 2, 1, 6, 7, 8, 9, 10, 11], "canonical id order"),
        ([1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "unique"),
    ],
)
def test_length_controlled_refuses_misaligned_ids(gamed_csv, ids, message):
    ann = make_annotations(len(ids))
    ann["id"] = ids
    gamed = metrics.load_gamed_table(gamed_csv)
    with pytest.raises(LCUnavailable, match=message):
        metrics.length_controlled(ann, gamed)
    summary = metrics.summarize(ann, "en", gamed)  # the other metrics survive, LC says why it is missing
    assert math.isnan(summary["lc_win_rate"]) and summary["lc_scope"].startswith("n/a:")
    assert summary["n_pairs"] == len(ids) - 1


def test_gamed_table_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"index": [0], "preference": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(LCUnavailable, match="missing columns"):
        metrics.load_gamed_table(bad)
    with pytest.raises(LCUnavailable, match="no such file"):
        metrics.load_gamed_table(tmp_path / "absent.csv")


def test_summarize_lengths_and_language_fidelity():
    ann = pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "output_1": ["x" * 10] * 4,
            "output_2": [
                "The weather is lovely today and we are going to the park together.",
                "Das Wetter ist heute sehr schön und wir gehen zusammen in den Park.",
                "Hoy hace muy buen tiempo y vamos a ir juntos al parque por la tarde.",
                "Das ist ein sehr guter Tag, um mit Freunden im Garten zu sitzen.",
            ],
            "generator_1": "ref",
            "generator_2": "m",
            "preference": [2.0, 2.0, 1.0, 1.5],
        }
    )
    out = metrics.summarize(ann, "de", gamed=None)
    assert out["language_fidelity"] == 50.0
    assert out["avg_length"] == pytest.approx(np.mean([len(t) for t in ann["output_2"]]))
    assert out["ref_avg_length"] == 10.0
    assert out["win_rate"] == pytest.approx(62.5)
    assert out["lc_scope"].startswith("n/a") and math.isnan(out["lc_win_rate"])
