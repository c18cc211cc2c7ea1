"""Implicit-reward accuracy on held-out preference pairs, per language and rewarding mode.

Accuracy = share of pairs with r(x, chosen) > r(x, rejected), where r = β·log π_dpo/π_ref and x is
the instruction the rewarding mode shows (`icr.reward.REWARD_MODES`). A tie counts as half. The
interval is Wilson's 95% score interval. This is the paper's Figure 3 measurement: does the English
DPO model judge answers in language l better against the English or the native instruction?
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path


from icr.config import RewardConfig
from icr.data import DataError, read_jsonl
from icr.models import LoadedModel
from icr.progress import progress
from icr.reward import reward_records

REQUIRED = ("id", "lang", "prompt", "prompt_en", "chosen", "rejected")


def _text(value) -> str:
    """A response given as a string or as TRL messages."""
    if isinstance(value, list):
        return value[-1]["content"]
    return value


def load_preference_pairs(source: str | Path) -> list[dict]:
    """Pairs from one .jsonl file or a folder of {lang}.jsonl files; every field in REQUIRED present."""
    source = Path(source)
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not files or not files[0].exists():
        raise DataError(f"{source}: no preference pairs (.jsonl) found")
    pairs = []
    for path in files:
        for lineno, row in enumerate(read_jsonl(path), start=1):
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: id {row.get('id')}: missing {', '.join(missing)}")
            pairs.append({k: (_text(row[k]) if k in ("prompt", "chosen", "rejected") else row[k])
                          for k in REQUIRED})
    return pairs


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pair_rewards(policy: LoadedModel, reference: LoadedModel, pairs: list[dict], config: RewardConfig,
                 translator: LoadedModel | None = None) -> list[tuple[float, float]]:
    """(r(chosen), r(rejected)) of each pair under `config.mode`, the pairs scored together."""
    generations = [{"id": p["id"], "lang": p["lang"], "prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]]}
                   for p in pairs]
    records = reward_records(generations, [p["prompt_en"] for p in pairs], policy, reference, config, translator)
    return [(r["reward"][0], r["reward"][1]) for r in records]


def reward_accuracy(policy: LoadedModel, reference: LoadedModel, pairs: list[dict], config: RewardConfig,
                    translator: LoadedModel | None = None) -> dict[str, dict]:
    """{lang: {accuracy, n, ci_low, ci_high, mean_margin}} for one rewarding mode."""
    wins: dict[str, float] = defaultdict(float)
    margins: dict[str, list[float]] = defaultdict(list)
    with progress(len(pairs), f"reward accuracy ({config.mode})", "pair") as bar:
        for k in range(0, len(pairs), config.batch_prompts):
            chunk = pairs[k : k + config.batch_prompts]
            for pair, (chosen, rejected) in zip(chunk, pair_rewards(policy, reference, chunk, config, translator)):
                wins[pair["lang"]] += 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
                margins[pair["lang"]].append(chosen - rejected)
            bar.update(len(chunk))
    table = {}
    for lang in sorted(margins):
        n = len(margins[lang])
        low, high = wilson_interval(wins[lang], n)
        table[lang] = {"accuracy": wins[lang] / n, "n": n, "ci_low": low, "ci_high": high,
                       "mean_margin": sum(margins[lang]) / n}
    return table


def reward_accuracy_table(policy, reference, pairs, configs: dict[str, RewardConfig], translator=None) -> dict:
    """{mode: {lang: ...}} for several rewarding modes."""
    return {mode: reward_accuracy(policy, reference, pairs, cfg, translator) for mode, cfg in configs.items()}


def format_accuracy_table(table: dict[str, dict]) -> str:
    modes = list(table)
    langs = sorted({lang for per_mode in table.values() for lang in per_mode})
    lines = ["| lang | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for lang in langs:
        cells = []
        for mode in modes:
            r = table[mode].get(lang)
            cells.append(f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.0f}–{100 * r['ci_high']:.0f}] "
                         f"(n={r['n']})" if r else "–")
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
