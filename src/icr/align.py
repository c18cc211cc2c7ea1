"""Stage 0, for users without an English DPO model: English DPO from a reference/SFT model.

The English preference data (TRL's format: `prompt`, `chosen`, `rejected`, as strings or as
messages) is converted to the conversational pairs format of `icr.core.records.TrainingPair` and trained
with the same training function (`icr.training.registry`, by `train.loss`) as the ICR iterations, so
stage 0 and stage 4 cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

from icr.config import AlignConfig, RewardConfig
from icr.core.errors import DataError
from icr.core.io import read_json, read_jsonl, write_jsonl_atomic
from icr.core.prompts import embedded_path
from icr.core.records import pair_messages
from icr.training.registry import TrainingJob, trainer_for


def load_english_preferences(source: str, split: str | None = "train") -> list[dict]:
    """Rows with conversational `prompt`/`chosen`/`rejected`, from a file, a Hub id or 'embedded:demo'.

    Rows carrying a `split` field are kept only if it equals `split`."""
    if source.startswith("embedded:"):
        rows = read_jsonl(embedded_path(source.split(":", 1)[1]) / "english_preferences.jsonl")
    elif Path(source).is_file():
        rows = read_jsonl(source) if source.endswith(".jsonl") else read_json(source)
    else:
        try:
            from datasets import load_dataset

            rows = list(load_dataset(source, split=split or "train"))
        except Exception as err:
            raise DataError(f"{source}: not a file, and loading it as a Hub dataset failed: {err}") from None
    pairs = []
    for k, row in enumerate(rows, start=1):
        if split and "split" in row and row["split"] != split:
            continue
        missing = [f for f in ("prompt", "chosen", "rejected") if f not in row]
        if missing:
            raise DataError(f"{source}: row {k}: missing {', '.join(missing)}")
        try:
            prompt, chosen, rejected = pair_messages(row)
        except ValueError as err:
            raise DataError(f"{source}: row {k}: {err}") from None
        pairs.append(
            {"id": str(row.get("id", k)), "lang": "en", "prompt": prompt, "chosen": chosen, "rejected": rejected}
        )
    if not pairs:
        raise DataError(f"{source}: no preference pairs (split={split!r})")
    return pairs


def align_english(config: AlignConfig) -> dict:
    """Train π_dpo from `config.model` on English preferences; returns the training metrics. Tracker
    logs (`train.report_to`) go to `<output>-tracking`, as run `train.run_name` (default: the folder's name)."""
    out_dir = Path(config.output)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pairs_file = out_dir.parent / f"{out_dir.name}-english-pairs.jsonl"
    write_jsonl_atomic(pairs_file, load_english_preferences(config.data, config.split))
    # the reward's scoring budget: stage 0 scores the reference log-probs as the iterations do
    job = TrainingJob(
        config.model,
        pairs_file,
        out_dir,
        config.train,
        RewardConfig().token_budget,
        config.device,
        run_name=config.train.run_name or out_dir.name,
        tracking_dir=out_dir.parent / f"{out_dir.name}-tracking",
    )
    return trainer_for(config.train.loss)(job)
