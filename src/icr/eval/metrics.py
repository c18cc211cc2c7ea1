"""Metrics of an annotations table: win rate, its standard error, alpaca_eval's length-controlled
win rate, output length and language fidelity.

An annotations table has one row per instruction, in alpaca_eval's layout: `id`, `output_1` (the
reference output), `output_2` (the evaluated model's output), `generator_1`, `generator_2` and
`preference` in [1, 2]: 1 = the reference is better, 2 = the model is better, 1.5 = a tie, NaN = no
verdict (dropped, and counted as invalid). Judges that give probabilities give any value between.

* win rate = mean of (preference − 1) × 100, so a tie counts as half a win; standard error = the
  standard error of that mean (pandas `sem`, ddof = 1), both exactly as `alpaca_eval.metrics.get_winrate`.
* length-controlled win rate: alpaca_eval's `length_controlled_v1` GLM, fitted with alpaca_eval's own
  functions (`make_dmatrix_for_model`, `fit_LogisticRegressionCV`). The GLM needs alpaca_eval's
  `df_gamed.csv` (annotations of two length-gamed baselines, plus the difficulty of each of the 805
  AlpacaEval instructions, looked up by position). This module takes that table as an argument
  instead of downloading it inside the computation, and looks the difficulty up by instruction id
  (id k ↔ position k − 1), which equals alpaca_eval's position lookup when the annotations cover the
  805 ids in order; `tests/eval/test_metrics.py` holds it to `get_length_controlled_winrate` within 1e-6.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from icr.core.languages import detect_language

log = logging.getLogger(__name__)

ALPACA_EVAL_SIZE = 805  # instructions of AlpacaEval / X-AlpacaEval, ids 1..805
GAMED_REPO, GAMED_FILE = "tatsu-lab/alpaca_eval", "df_gamed.csv"
GLM_NAME = "length_controlled_v1"
EVAL_EXTRA = "pip install 'alpaca-eval==0.6.6' 'setuptools<82'"


class LCUnavailable(RuntimeError):
    """The length-controlled win rate cannot be computed; the message says why."""


def as_frame(annotations: pd.DataFrame | Sequence[dict[str, Any]]) -> pd.DataFrame:
    return annotations.copy() if isinstance(annotations, pd.DataFrame) else pd.DataFrame.from_records(annotations)


def model_preference(preferences) -> pd.Series:
    """P(model better) in [0, 1] from alpaca_eval preferences (0 is alpaca_eval's legacy tie code)."""
    return pd.Series(preferences, dtype=float).replace({0.0: 1.5}) - 1


def head_to_head(preferences) -> dict[str, float]:
    """Counts, win rate (ties as half) and its standard error, in percent."""
    p_all = model_preference(preferences).reset_index(drop=True)
    valid = p_all[p_all.between(0, 1)]
    return {
        "n_pairs": int(len(valid)),
        "n_invalid": int(len(p_all) - len(valid)),
        "n_wins": int((valid > 0.5).sum()),
        "n_losses": int((valid < 0.5).sum()),
        "n_draws": int((valid == 0.5).sum()),
        "win_rate": float(valid.mean() * 100) if len(valid) else float("nan"),
        "standard_error": float(valid.sem() * 100) if len(valid) > 1 else float("nan"),
    }


def mean_length(outputs: Sequence[str]) -> float:
    """Mean output length in characters (alpaca_eval's length measure)."""
    return float(np.mean([len(o) for o in outputs])) if len(outputs) else float("nan")


def language_fidelity(outputs: Sequence[str], lang: str) -> float:
    """Share (in percent) of outputs whose detected language is `lang` (empty output: not `lang`)."""
    if not len(outputs):
        return float("nan")
    return 100.0 * sum(detect_language(o)[0] == lang for o in outputs) / len(outputs)


# ---------------------------------------------------------------- length control


def _glm_module():
    """alpaca_eval's GLM module, imported quietly (it imports the deprecated pkg_resources)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from alpaca_eval.metrics import glm_winrate
    except ImportError as err:
        raise LCUnavailable(f"the length-controlled win rate needs alpaca_eval ({err}): {EVAL_EXTRA}") from None
    return glm_winrate


def load_gamed_table(source: str | Path | None = None) -> pd.DataFrame:
    """alpaca_eval's `df_gamed.csv`: a local CSV path, or (None) the Hub file alpaca_eval itself
    downloads (served from the Hugging Face cache when offline, if it was fetched once)."""
    if source is None:
        try:
            from huggingface_hub import hf_hub_download

            source = hf_hub_download(repo_id=GAMED_REPO, filename=GAMED_FILE, repo_type="dataset")
        except Exception as err:  # offline and not cached, ...
            raise LCUnavailable(
                f"the length-controlled win rate needs alpaca_eval's {GAMED_FILE} (dataset {GAMED_REPO} on "
                f"the Hugging Face Hub), which could not be loaded ({type(err).__name__}); download it once "
                f"online, or pass its path with --lc-data"
            ) from None
    path = Path(source)
    if not path.is_file():
        raise LCUnavailable(f"{path}: no such file (expected alpaca_eval's {GAMED_FILE})")
    table = pd.read_csv(path)
    missing = {"index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"} - set(table)
    if missing:
        raise LCUnavailable(f"{path}: not alpaca_eval's {GAMED_FILE} (missing columns {sorted(missing)})")
    return table


def _lc_ids(df: pd.DataFrame) -> np.ndarray:
    try:
        ids = df["id"].astype(int).to_numpy()
    except (KeyError, ValueError, TypeError):
        raise LCUnavailable("length control needs integer AlpacaEval ids 1..805 in column 'id'") from None
    if len(set(ids)) != len(ids) or ids.min() < 1 or ids.max() > ALPACA_EVAL_SIZE:
        raise LCUnavailable(
            "length control needs unique AlpacaEval ids within 1..805 (the GLM's instruction "
            "difficulty is looked up by id)"
        )
    if not np.all(np.diff(ids) > 0):
        raise LCUnavailable("length control needs the annotations in canonical id order")
    return ids


def length_controlled(annotations, gamed: pd.DataFrame, glm_name: str = GLM_NAME) -> dict[str, Any]:
    """alpaca_eval's length-controlled win rate and its standard error (percent), plus `lc_scope`:
    'full' when all 805 instructions are covered, else 'subset (n of 805)' — a subset's LC uses the
    same GLM but is not comparable with published full-benchmark numbers."""
    glm = _glm_module()
    info = glm.GLM_INFO[glm_name]
    df = as_frame(annotations).reset_index(drop=True)
    ids = _lc_ids(df)
    if df["output_1"].equals(df["output_2"]) or (df["generator_1"] == df["generator_2"]).all():
        return {"lc_win_rate": 50.0, "lc_standard_error": 0.0, "lc_scope": _scope(ids)}
    difficulty = gamed.drop_duplicates("index")["instruction_difficulty"]
    delta = df["output_1"].str.len() - df["output_2"].str.len()
    if not delta.std() > 0:
        raise LCUnavailable("length control needs output length differences that vary between instructions")
    feats = pd.DataFrame(
        {
            "preference": model_preference(df["preference"]),
            "index": ids - 1,
            "std_delta_len": delta / delta.std(),
            "instruction_difficulty": [difficulty[i] for i in ids - 1],
            "not_gamed_baseline": True,
        }
    )
    test = feats[["instruction_difficulty", "not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0
    lam = info["regularize_to_baseline_lambda"]
    train, weight = feats, None
    if lam:
        train = pd.concat([gamed.drop(columns=["model"], errors="ignore"), feats], axis=0)
        # the two gamed baselines share weight λ; the evaluated model's rows weigh 1
        weight = train["not_gamed_baseline"].astype(float) + (lam * (~train["not_gamed_baseline"])).astype(float) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_train, x_test = glm.make_dmatrix_for_model(train, test, formula=info["formula"])
        keep = x_train["preference"].notna()
        x_train = x_train[keep]
        if weight is not None:
            weight = weight[keep]
        model = glm.fit_LogisticRegressionCV(
            x_train, "preference", is_ytrue_proba=True, sample_weight=weight, **info["kwargs"]
        )
        predicted = model.predict_proba(x_test)[:, 1]
    return {
        "lc_win_rate": float(predicted.mean() * 100),
        "lc_standard_error": float(pd.Series(predicted).sem() * 100),
        "lc_scope": _scope(ids),
    }


def _scope(ids: np.ndarray) -> str:
    return "full" if len(ids) == ALPACA_EVAL_SIZE else f"subset ({len(ids)} of {ALPACA_EVAL_SIZE})"


# ---------------------------------------------------------------- one (model, language) cell


def summarize(
    annotations, lang: str, gamed: pd.DataFrame | None = None, lc_unavailable: str | None = None
) -> dict[str, Any]:
    """All metrics of one model in one language. `gamed` None (or `lc_unavailable` set) leaves the
    LC fields NaN with `lc_scope` = 'n/a: <reason>'."""
    df = as_frame(annotations)
    out: dict[str, Any] = head_to_head(df["preference"])
    out["avg_length"] = mean_length(list(df["output_2"]))
    out["ref_avg_length"] = mean_length(list(df["output_1"]))
    out["language_fidelity"] = language_fidelity(list(df["output_2"]), lang)
    out.update({"lc_win_rate": float("nan"), "lc_standard_error": float("nan")})
    if lc_unavailable is not None or gamed is None:
        out["lc_scope"] = f"n/a: {lc_unavailable or 'no df_gamed table'}"
        return out
    try:
        out.update(length_controlled(df, gamed))
    except Exception as err:  # the judgements are paid for: a failed fit must not lose the table
        reason = str(err) if isinstance(err, LCUnavailable) else f"GLM fit failed ({type(err).__name__}: {err})"
        log.warning("%s: length-controlled win rate not computed: %s", lang, reason)
        out["lc_scope"] = f"n/a: {reason}"
    return out
