"""`icr export`: one output of a run's iteration as a folder the Hugging Face tools read.

    --what pairs | generations | rewards     DIR/data/{lang}.jsonl + DIR/README.md (dataset card:
                                             one config per language, the settings that made it);
                                             `datasets.load_dataset(DIR, lang)` reads it
    --what model                             a copy of iter_t/model (π^{t+1}) with its model card,
                                             eval results added from `--eval` (an `icr eval` folder)

`--push-to-hub REPO` then uploads the folder with `huggingface_hub.upload_folder` (the repo is
created if missing; it needs network and a token, as huggingface_hub reads them).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from icr.config import ExportConfig, RunConfig, load_config
from icr.core.errors import DataError
from icr.core.io import read_json, read_jsonl, write_jsonl_atomic, write_text_atomic
from icr.runtime.cards import count_by_language, dataset_card, model_card
from icr.runtime.layout import RunLayout
from icr.stages import STAGES


def run_config_of(root: Path) -> RunConfig:
    config_file = RunLayout(root).config_file
    if not config_file.exists():
        raise DataError(f"{root}: not a run folder (no config.yaml)")
    return load_config(config_file)


def dataset_rows(root: Path, what: str, t: int, languages: list[str]) -> dict[str, list[dict[str, Any]]]:
    """{lang: rows} of one of iteration t's datasets, in the run's files' order."""
    layout = RunLayout(root)
    if what == "pairs":
        pairs_file = layout.pairs_file(t)
        if not pairs_file.exists():
            raise DataError(f"{pairs_file}: no pairs (has the pairs stage of iteration {t} run?)")
        rows = read_jsonl(pairs_file)
        return {lang: [r for r in rows if r["lang"] == lang] for lang in languages}
    folder = {"generations": layout.generations_dir, "rewards": layout.rewards_dir}[what](t)
    missing = [lang for lang in languages if not (folder / f"{lang}.jsonl").exists()]
    if missing:
        raise DataError(f"{folder}: no {what} for {', '.join(missing)} (has the stage of iteration {t} run?)")
    return {lang: read_jsonl(folder / f"{lang}.jsonl") for lang in languages}


def _fresh_folder(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        raise DataError(f"{path}: exists and is not empty; export to a new folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def export_dataset(config: ExportConfig) -> Path:
    root, t, out = Path(config.run_dir), config.iteration, Path(config.to)
    run = run_config_of(root)
    by_lang = dataset_rows(root, config.what, t, list(run.data.languages))
    by_lang = {lang: rows for lang, rows in by_lang.items() if rows}
    if not by_lang:
        raise DataError(f"{root}: iteration {t} has no {config.what} rows")
    _fresh_folder(out)
    for lang, rows in by_lang.items():
        write_jsonl_atomic(out / "data" / f"{lang}.jsonl", rows)
    stage = {"pairs": "pairs", "generations": "generate", "rewards": "reward"}[config.what]
    card = dataset_card(config.what, run, t, {k: len(v) for k, v in by_lang.items()}, STAGES[stage].sections)
    write_text_atomic(out / "README.md", str(card))
    return out


def model_evals(eval_dir: str | None, name: str) -> list[dict[str, Any]]:
    """The rows of model `name` ('pi1', ...) in an `icr eval` folder's results.json."""
    if eval_dir is None:
        return []
    path = Path(eval_dir) / "results.json"
    if not path.exists():
        raise DataError(f"{path}: no icr eval results")
    return [r for r in read_json(path)["results"] if r.get("model") == name]


def export_model(config: ExportConfig) -> Path:
    root, t, out = Path(config.run_dir), config.iteration, Path(config.to)
    run = run_config_of(root)
    layout = RunLayout(root)
    source = layout.model_dir(t)
    if not (source / "config.json").exists():
        raise DataError(f"{source}: no trained model (has iteration {t}'s train stage finished?)")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; export to a new folder")
    shutil.copytree(source, out, dirs_exist_ok=True)
    evals = model_evals(config.eval, f"pi{t + 1}")
    pairs = count_by_language(read_jsonl(layout.pairs_file(t)), list(run.data.languages))
    init = run.models.policy if t == 0 else str(layout.model_dir(t - 1))
    write_text_atomic(out / "README.md", str(model_card(run, t, init, pairs, evals)))
    return out


def push_folder(folder: Path, repo: str, repo_type: str, private: bool) -> str:
    """Upload `folder` to the Hub repo `repo` (created if missing); return the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
    info = upload_folder(repo_id=repo, folder_path=str(folder), repo_type=repo_type)
    return str(info)


def export(config: ExportConfig) -> tuple[Path, str | None]:
    """Write the export folder, and push it when asked; (folder, commit URL or None)."""
    folder = export_model(config) if config.what == "model" else export_dataset(config)
    url = None
    if config.push_to_hub:
        url = push_folder(folder, config.push_to_hub, "model" if config.what == "model" else "dataset", config.private)
    return folder, url
