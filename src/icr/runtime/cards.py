"""Hugging Face cards (README.md with YAML metadata) for a run's datasets and models.

A dataset card (`dataset_card`) declares one `datasets` config per language (`configs:`, file
data/{lang}.jsonl, split train), so `datasets.load_dataset(folder, lang)` reads one language and
`load_dataset(folder)` the first. A model card (`model_card`) gives the base model (where it is a
Hub id), the languages, the pairs of its iteration, `library_name: transformers`, the training
settings and, once `icr eval` has judged the model, its win rates as model-index results. The
run's settings that produced either are in the card's body as YAML. Metadata is built with
`huggingface_hub`'s `DatasetCardData` / `ModelCardData`, so it is what the Hub validates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from icr.config import RunConfig
from icr.config.base import hashed_fields

PAPER = "https://arxiv.org/abs/2503.04647"
TAGS = ["icr", "dpo", "multilingual", "preference-alignment"]


def is_hub_id(spec: str) -> bool:
    """`org/name` (optionally `@revision`) that is no local path: what the Hub's base_model accepts."""
    name = spec.split("@", 1)[0]
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def settings_yaml(config: RunConfig, sections: tuple[str, ...]) -> str:
    """The named config sections (without fields that change nothing computed) as YAML."""
    tree = {s: config.seed if s == "seed" else hashed_fields(getattr(config, s)) for s in sections}
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def language_configs(languages: list[str]) -> list[dict[str, Any]]:
    return [
        {"config_name": lang, "data_files": [{"split": "train", "path": f"data/{lang}.jsonl"}]} for lang in languages
    ]


DATASET_FORMATS = {
    "pairs": "TRL's conversational preference format: `prompt` (user message), `chosen` and `rejected` "
    "(assistant messages), with `id`, `lang`, `prompt_en` and the scores that chose the pair "
    "(reward_/score_/len_ chosen and rejected, alpha).",
    "generations": "One row per prompt: `prompt`, its sampled `responses`, their `response_tokens`, "
    "`truncated` and `seed`.",
    "rewards": "One row per prompt: `responses` with `logp_policy`, `logp_ref`, `scored_tokens` and "
    "`reward` = β·(logp_policy − logp_ref), scored against `reward_prompt`.",
}


def dataset_card(what: str, config: RunConfig, iteration: int, counts: dict[str, int], sections: tuple[str, ...]):
    """The card of one exported dataset of iteration `iteration` (`counts`: rows per language)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    languages = list(counts)
    data = DatasetCardData(
        language=languages,
        multilinguality="multilingual" if len(languages) > 1 else "monolingual",
        tags=[*TAGS, what],
        pretty_name=f"{config.name} {what} (ICR iteration {iteration})",
        configs=language_configs(languages),
    )
    rows = "\n".join(f"| {lang} | {n} |" for lang, n in counts.items())
    body = (
        f"# {config.name}: {what} of ICR iteration {iteration}\n\n"
        f"Made by [icr]({PAPER}) (Implicit Cross-Lingual Rewarding). {DATASET_FORMATS[what]}\n\n"
        f"One config per language: `datasets.load_dataset(PATH, '{languages[0]}')`.\n\n"
        f"| language | rows |\n|---|---|\n{rows}\n\n"
        f"## Settings that made it\n\n```yaml\n{settings_yaml(config, sections)}```\n"
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def eval_results(results: list[dict[str, Any]]) -> list:
    """huggingface_hub `EvalResult`s of one model's rows of an `icr eval` results.json."""
    from huggingface_hub import EvalResult

    out = []
    for row in results:
        for metric, column in (("win_rate", "win_rate"), ("lc_win_rate", "lc_win_rate")):
            value = row.get(column)
            if value is None:
                continue
            out.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type="x-alpacaeval",
                    dataset_name=f"X-AlpacaEval ({row['lang']})",
                    dataset_config=row["lang"],
                    metric_type=metric,
                    metric_value=float(value),
                    metric_name=f"{metric} vs reference (%)",
                )
            )
    return out


def model_card(
    config: RunConfig,
    iteration: int,
    init_spec: str,
    pair_counts: dict[str, int],
    evals: list[dict[str, Any]] | None = None,
):
    """The card of π^{t+1}, trained in iteration t = `iteration` from `init_spec` on the pairs of
    `pair_counts` (pairs per language); `evals`: its rows of an `icr eval` results.json."""
    from huggingface_hub import ModelCard, ModelCardData

    name = f"{config.name}-pi{iteration + 1}"
    base = config.models.policy
    data = ModelCardData(
        base_model=base.split("@", 1)[0] if is_hub_id(base) else None,
        language=list(config.data.languages),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[*TAGS, "trl"],
        model_name=name,
        eval_results=eval_results(evals) if evals else None,
    )
    pairs = "\n".join(f"| {lang} | {n} |" for lang, n in pair_counts.items())
    body = (
        f"# {name}\n\nπ^{iteration + 1} of the ICR run `{config.name}` ([Implicit Cross-Lingual Rewarding]({PAPER})): "
        f"DPO + λ·NLL from `{init_spec}` on the preference pairs of iteration {iteration} "
        f"(`iter_{iteration}/pairs.jsonl`), rewarded by the implicit reward in `{config.reward.mode}` mode.\n\n"
        f"Base model: `{base}`; reference: `{config.models.reference}`.\n\n"
        f"| language | pairs |\n|---|---|\n{pairs}\n\n"
        f"## Training settings\n\n```yaml\n{settings_yaml(config, ('seed', 'reward', 'pairs', 'train'))}```\n"
    )
    if evals:
        lines = "\n".join(f"| {r['lang']} | {r.get('lc_win_rate')} | {r.get('win_rate')} |" for r in evals)
        body += f"\n## X-AlpacaEval (`icr eval`)\n\n| language | LC win rate | win rate |\n|---|---|---|\n{lines}\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def count_by_language(rows: list[dict[str, Any]], languages: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(languages, 0)
    for row in rows:
        counts[row["lang"]] = counts.get(row["lang"], 0) + 1
    return counts
