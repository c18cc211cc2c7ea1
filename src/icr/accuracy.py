"""Implicit-reward accuracy on held-out preference pairs, per language and rewarding mode.

Accuracy = share of pairs with r(x, chosen) > r(x, rejected), where r = β·log π_dpo/π_ref and x is
the instruction the rewarding mode shows (`icr.engines.rewarding.STRATEGIES`). A tie counts as half. The
interval is Wilson's 95% score interval. This is the paper's Figure 3 measurement: does the English
DPO model judge answers in language l better against the English or the native instruction?

A summed log-ratio grows with the number of tokens, so it can prefer an answer for its length
alone. Each language therefore also reports the accuracy of the per-token mean r / (scored tokens),
both accuracies on the pairs whose chosen response is the longer one (in characters) and on the
others, and the mean lengths: a reward that tracks preference scores alike on both subsets; one
that tracks length scores high on one and low on the other.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from icr.config import AccuracyConfig, RewardConfig
from icr.core.errors import DataError
from icr.core.io import read_jsonl
from icr.core.models import LoadedModel
from icr.core.progress import progress
from icr.core.records import PreferencePair
from icr.engines.rewarding import make_strategy
from icr.engines.scoring.scorer import Scorer
from icr.score import ScoreItem, score_items


def load_preference_pairs(source: str | Path) -> list[PreferencePair]:
    """Pairs from one .jsonl file or a folder of {lang}.jsonl files; every field in REQUIRED present."""
    source = Path(source)
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not files or not files[0].exists():
        raise DataError(f"{source}: no preference pairs (.jsonl) found")
    pairs = []
    for path in files:
        for lineno, row in enumerate(read_jsonl(path), start=1):
            missing = [k for k in PreferencePair.REQUIRED if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: id {row.get('id')}: missing {', '.join(missing)}")
            pairs.append(PreferencePair.from_json(row))
    return pairs


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pair_rewards(
    policy: Scorer,
    reference: Scorer,
    pairs: list[PreferencePair],
    config: RewardConfig,
    translator: LoadedModel | None = None,
) -> list[dict]:
    """For each pair: `reward` and `scored_tokens` of (chosen, rejected) under
    `config.mode`, the pairs scored together by `icr score`'s scorer."""
    items = [ScoreItem(p.id, p.lang, p.prompt, p.prompt_en, [p.chosen, p.rejected]) for p in pairs]
    scored = score_items(items, policy, reference, config, make_strategy(config, translator))
    return [{"reward": record["reward"], "scored_tokens": record["scored_tokens"]} for record in scored]


def _win(chosen: float, rejected: float) -> float:
    return 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0


def _accuracy(wins: list[float]) -> dict:
    """Share of wins (ties count half) and its Wilson interval; None where there are no pairs."""
    if not wins:
        return {"n": 0, "accuracy": None, "ci_low": None, "ci_high": None}
    low, high = wilson_interval(sum(wins), len(wins))
    return {"n": len(wins), "accuracy": sum(wins) / len(wins), "ci_low": low, "ci_high": high}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_language(rows: list[dict]) -> dict:
    """Accuracy rows of one language → the summed-reward accuracy (the paper's) with its interval
    and mean margin, the per-token-mean accuracy, both split by whether the chosen response is the
    longer one (characters), and mean lengths."""
    summed = [row["win_summed"] for row in rows]
    table = {**_accuracy(summed), "mean_margin": _mean([row["margin"] for row in rows])}
    table["per_token"] = _accuracy([row["win_per_token"] for row in rows])
    for name, subset in (
        ("chosen_longer", [r for r in rows if r["chosen_longer"]]),
        ("chosen_not_longer", [r for r in rows if not r["chosen_longer"]]),
    ):
        table[name] = {
            **_accuracy([r["win_summed"] for r in subset]),
            "per_token_accuracy": _accuracy([r["win_per_token"] for r in subset])["accuracy"],
        }
    for key in ("len_chosen", "len_rejected", "tokens_chosen", "tokens_rejected"):
        table[f"mean_{key}"] = _mean([row[key] for row in rows])
    return table


def accuracy_row(pair: PreferencePair, scored: dict) -> dict:
    """One pair's outcome under the summed reward and under the per-token mean reward, and lengths."""
    (chosen, rejected), (n_chosen, n_rejected) = scored["reward"], scored["scored_tokens"]
    return {
        "win_summed": _win(chosen, rejected),
        "margin": chosen - rejected,
        "win_per_token": _win(chosen / max(n_chosen, 1), rejected / max(n_rejected, 1)),
        "len_chosen": len(pair.chosen),
        "len_rejected": len(pair.rejected),
        "tokens_chosen": n_chosen,
        "tokens_rejected": n_rejected,
        "chosen_longer": len(pair.chosen) > len(pair.rejected),
    }


def reward_accuracy(
    policy: LoadedModel,
    reference: LoadedModel,
    pairs: list[PreferencePair],
    config: RewardConfig,
    translator: LoadedModel | None = None,
) -> dict[str, dict]:
    """{lang: summarize_language(...)} for one rewarding mode: `accuracy`, `n`, `ci_low`, `ci_high`,
    `mean_margin` (summed reward), `per_token`, `chosen_longer`, `chosen_not_longer`, mean lengths."""
    rows: dict[str, list[dict]] = defaultdict(list)
    policy_scorer, reference_scorer = Scorer.of(policy, config.token_budget), Scorer.of(reference, config.token_budget)
    with progress(len(pairs), f"reward accuracy ({config.mode})", "pair") as bar:
        for k in range(0, len(pairs), config.batch_prompts):
            chunk = pairs[k : k + config.batch_prompts]
            for pair, scored in zip(chunk, pair_rewards(policy_scorer, reference_scorer, chunk, config, translator)):
                rows[pair.lang].append(accuracy_row(pair, scored))
            bar.update(len(chunk))
    return {lang: summarize_language(rows[lang]) for lang in sorted(rows)}


def reward_accuracy_table(
    policy: LoadedModel,
    reference: LoadedModel,
    pairs: list[PreferencePair],
    config: AccuracyConfig,
    translator: LoadedModel | None = None,
) -> dict:
    """{mode: {lang: ...}} for each of `config.modes`."""
    return {
        mode: reward_accuracy(policy, reference, pairs, config.reward.model_copy(update={"mode": mode}), translator)
        for mode in config.modes
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def format_accuracy_table(table: dict[str, dict]) -> str:
    """One row per mode and language: summed (with interval), per-token mean, the split by which
    response is longer, and mean lengths in characters."""
    lines = [
        (
            "| mode | lang | n | summed reward | per-token mean | chosen longer: n, summed, per-token | "
            "chosen not longer: n, summed, per-token | mean chars chosen / rejected |"
        ),
        "|---" * 8 + "|",
    ]
    for mode, per_lang in table.items():
        for lang, r in per_lang.items():
            longer, other = r["chosen_longer"], r["chosen_not_longer"]
            lines.append(
                f"| {mode} | {lang} | {r['n']} | {100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.0f}–"
                f"{100 * r['ci_high']:.0f}] | {_pct(r['per_token']['accuracy'])} | {longer['n']}, "
                f"{_pct(longer['accuracy'])}, {_pct(longer['per_token_accuracy'])} | {other['n']}, "
                f"{_pct(other['accuracy'])}, {_pct(other['per_token_accuracy'])} | "
                f"{r['mean_len_chosen']:.0f} / {r['mean_len_rejected']:.0f} |"
            )
    return "\n".join(lines) + "\n"
