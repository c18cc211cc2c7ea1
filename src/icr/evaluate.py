"""X-AlpacaEval evaluation: outputs, judging against a reference, and the leaderboard.

    OUT/
      outputs/{model}/{lang}/model_outputs.json   alpaca_eval format: generator, dataset, id, instruction, output
      outputs/{model}/{lang}/generations.jsonl    the same plus n_tokens, truncated, seed (resume log)
      outputs/{model}/{lang}/generation.json      model spec and decoding; a resume must match it
      annotations/{model}/{lang}.json             alpaca_eval annotations: output_1 = reference, output_2 = model,
                                                  preference in [1, 2] (2 = model better)
      results.json, results.csv                   every metric per model and language, judge and settings
      leaderboard.md, leaderboard.csv, leaderboard.png   the paper's Table 2 layout

Generation follows the paper (T = 0.6, top-p = 0.9, up to 2048 new tokens, one sample per
instruction, a per-instruction seed) and resumes where it stopped. Outputs are validated against
the reference before judging: a missing or duplicate id, an unknown id or an instruction that
differs from the reference's is an error naming the id.
"""

from __future__ import annotations

import gc
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from icr.data import DataError, JsonlAppender, read_json, read_jsonl, resolve_prompt_source, write_json_atomic
from icr.distributed import Shard, current_shard, sharded_jsonl
from icr.generate import close_generator, prompt_seed
from icr.judges import Judge, JudgementCache, PairItem, judge_pairs
from icr.languages import check_language
from icr.metrics import LCUnavailable, load_gamed_table, summarize

log = logging.getLogger(__name__)

DEFAULT_LANGUAGES = ("en", "es", "de", "fr", "ru", "zh", "th", "sw", "bn")
DEFAULT_REFERENCE = "gpt-4-turbo-2024-04-09"


class OutputsError(DataError):
    """Model outputs that do not match the benchmark; the message names the file and the id."""


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.6
    top_p: float = 0.9
    max_new_tokens: int = 2048
    seed: int = 0
    backend: str = "hf"
    batch_size: int = 8  # instructions decoded together (a speed knob: not part of the resume check)


@dataclass(frozen=True)
class EvalModel:
    """A row of the leaderboard: a model to generate with (`spec`) or existing outputs (`outputs`)."""

    name: str
    spec: str | None = None
    outputs: str | None = None  # folder of {lang}.json or {lang}/model_outputs.json


def parse_model_option(value: str) -> EvalModel:
    """'name=spec' or a bare spec (named after its last path component)."""
    name, sep, spec = value.partition("=")
    if not sep or not name or "/" in name:
        spec = value
        name = Path(value.rstrip("/")).name or value
    return EvalModel(name=name, spec=spec)


def run_dir_models(run_dir: str | Path) -> list[EvalModel]:
    """π^0 (models.policy of the run's config.yaml) as 'pi0', then 'pi{t+1}' = iter_t/model for each
    trained iteration."""
    import yaml

    root = Path(run_dir)
    config_file = root / "config.yaml"
    if not config_file.exists():
        raise DataError(f"{root}: not a run folder (no config.yaml)")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    policy = (config.get("models") or {}).get("policy")
    if not policy:
        raise DataError(f"{config_file}: no models.policy")
    models = [EvalModel("pi0", str(policy))]
    iters = sorted((p for p in root.glob("iter_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    for it in iters:
        if (it / "model" / "config.json").exists():
            models.append(EvalModel(f"pi{int(it.name[5:]) + 1}", str(it / "model")))
    return models


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._") or "model"


# ---------------------------------------------------------------- benchmark and outputs


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise OutputsError(f"{path}: expected a JSON list of objects")
    return records


def _language_file(folder: Path, lang: str) -> Path | None:
    for rel in (f"{lang}.json", f"{lang}.jsonl", f"{lang}/model_outputs.json"):
        if (folder / rel).is_file():
            return folder / rel
    return None


def resolve_sources(prompts: str, reference: str | None) -> tuple[Path, Path]:
    """(prompts folder, reference folder). `prompts` is a folder or Hub dataset holding
    {lang}.json, or a benchmark root with prompts/ and reference/<name>/ (like X-AlpacaEval's);
    the reference defaults to that root's reference/gpt-4-turbo-2024-04-09."""
    root = resolve_prompt_source(prompts)
    prompt_dir = root / "prompts" if (root / "prompts").is_dir() else root
    if reference is not None:
        ref = Path(reference)
        return prompt_dir, ref if ref.is_dir() else resolve_prompt_source(reference)
    for candidate in (root / "reference" / DEFAULT_REFERENCE, prompt_dir.parent / "reference" / DEFAULT_REFERENCE):
        if candidate.is_dir():
            return prompt_dir, candidate
    raise DataError(f"{prompts}: no reference/{DEFAULT_REFERENCE}/ beside the prompts; pass --reference-outputs")


def _attach_ids(records: list[dict], ids: list[Any], path: Path) -> list[dict]:
    """Records without any `id` (alpaca_eval's own files) get the benchmark's ids by position."""
    if any("id" in r for r in records):
        return records
    if len(records) > len(ids):
        raise OutputsError(f"{path}: no 'id' fields and {len(records)} records for {len(ids)} instructions")
    return [{**r, "id": i} for r, i in zip(records, ids)]


def load_benchmark(prompt_dir: Path, reference_dir: Path, lang: str, limit: int | None = None) -> list[dict]:
    """The first `limit` instructions of `lang` (file order) with their reference outputs:
    records {id, dataset, instruction, reference, reference_generator}."""
    check_language(lang)
    path = _language_file(prompt_dir, lang)
    if path is None:
        raise DataError(f"{prompt_dir}: no prompts for language {lang!r} (expected {lang}.json)")
    prompts, seen = [], set()
    for k, r in enumerate(_read_records(path), start=1):
        if r.get("id") is None or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise DataError(f"{path}: item {k}: needs an 'id' and a non-empty 'instruction'")
        if str(r["id"]) in seen:
            raise DataError(f"{path}: id {r['id']}: duplicate id")
        seen.add(str(r["id"]))
        prompts.append(r)
    ref_path = _language_file(reference_dir, lang)
    if ref_path is None:
        raise DataError(f"{reference_dir}: no reference outputs for language {lang!r}")
    reference = index_outputs(_read_records(ref_path), prompts, ref_path)
    items = []
    for p in prompts[:limit]:
        ref = reference[str(p["id"])]
        items.append({"id": p["id"], "dataset": p.get("dataset", ""), "instruction": p["instruction"],
                      "reference": ref["output"], "reference_generator": str(ref.get("generator", "reference"))})
    return items


def index_outputs(records: list[dict], benchmark: list[dict], path: Path, required: list[Any] | None = None
                  ) -> dict[str, dict]:
    """Validate outputs against the benchmark instructions and index them by id (as a string).

    Errors (naming the id): a duplicate id, an id not in the benchmark, an instruction that differs
    from the benchmark's, an output that is not a string, and any id of `required` (default: all
    benchmark ids) without an output."""
    records = _attach_ids(records, [b["id"] for b in benchmark], path)
    expected = {str(b["id"]): b["instruction"] for b in benchmark}
    by_id: dict[str, dict] = {}
    for k, r in enumerate(records, start=1):
        if r.get("id") is None:
            raise OutputsError(f"{path}: item {k}: no 'id'")
        rid = str(r["id"])
        if rid in by_id:
            raise OutputsError(f"{path}: id {rid}: duplicate id")
        if rid not in expected:
            raise OutputsError(f"{path}: id {rid}: not an id of the benchmark")
        if str(r.get("instruction", "")).strip() != expected[rid].strip():
            raise OutputsError(f"{path}: id {rid}: instruction differs from the reference's "
                               f"({str(r.get('instruction', ''))[:60]!r} vs {expected[rid][:60]!r})")
        if not isinstance(r.get("output"), str):
            raise OutputsError(f"{path}: id {rid}: 'output' is missing or not a string")
        by_id[rid] = r
    missing = [str(i) for i in (required if required is not None else expected) if str(i) not in by_id]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise OutputsError(f"{path}: no output for id {', '.join(missing[:5])}{more}")
    return by_id


def read_outputs(folder: str | Path, lang: str, items: list[dict]) -> dict[str, str]:
    """Existing outputs of `lang` in `folder`, validated to cover every evaluated item."""
    path = _language_file(Path(folder), lang)
    if path is None:
        raise OutputsError(f"{folder}: no outputs for language {lang!r} (expected {lang}.json or "
                           f"{lang}/model_outputs.json)")
    by_id = index_outputs(_read_records(path), items, path)
    return {rid: r["output"] for rid, r in by_id.items()}


def generate_outputs(generator, model: EvalModel, lang: str, items: list[dict], folder: Path,
                     decoding: Decoding, shard: Shard = Shard()) -> dict[str, str]:
    """Answer every item not yet in `folder/generations.jsonl` (one sample, per-id seed), then write
    `model_outputs.json` in benchmark order. A folder generated with another model or decoding is
    an error, never silently mixed."""
    meta = {"model": model.spec, "decoding": {k: v for k, v in asdict(decoding).items() if k != "batch_size"}}
    meta_path = folder / "generation.json"
    if meta_path.exists() and read_json(meta_path) != meta:
        raise OutputsError(f"{folder}: outputs were generated with {read_json(meta_path)}, not {meta}; "
                           "use another --output folder or delete this one")
    if shard.is_main:
        write_json_atomic(meta_path, meta)
    log_path = folder / "generations.jsonl"
    size = max(1, decoding.batch_size)
    chunks = [items[k : k + size] for k in range(0, len(items), size)]  # fixed chunks of the benchmark order

    def work(target: Path, done_ids: set[str]) -> None:
        todo = [c for k, c in enumerate(chunks) if shard.owns(k) and any(str(it["id"]) not in done_ids for it in c)]
        missing = sum(str(it["id"]) not in done_ids for c in todo for it in c)
        if missing:
            log.info("%s/%s: generating %d outputs (%d done)", model.name, lang, missing, len(done_ids))
        done = set(done_ids)
        with JsonlAppender(target) as out:
            for chunk in todo:
                seeds = [prompt_seed(decoding.seed, 0, lang, str(it["id"])) for it in chunk]
                for it, seed, sample in zip(chunk, seeds, _sample_chunk(generator, chunk, seeds, done)):
                    if str(it["id"]) in done:
                        continue
                    out.write({"id": it["id"], "instruction": it["instruction"], "output": sample.text,
                               "n_tokens": sample.n_tokens, "truncated": sample.truncated, "seed": seed})
                    done.add(str(it["id"]))

    order = [str(it["id"]) for it in items]
    merged = sharded_jsonl(log_path, order, shard, work, key=lambda r: str(r["id"]))
    done = {str(r["id"]): r for r in merged}
    for it in items:  # a resume log written for other prompts must not be passed off as answers to these
        if done[str(it["id"])]["instruction"].strip() != it["instruction"].strip():
            raise OutputsError(f"{log_path}: id {it['id']}: instruction differs from the benchmark's")
    ordered = [done[k] for k in order]
    datasets = {str(it["id"]): it["dataset"] for it in items}
    if shard.is_main:
        write_json_atomic(folder / "model_outputs.json", [
            {"generator": model.name, "dataset": datasets.get(str(r["id"]), ""), "id": r["id"],
             "instruction": r["instruction"], "output": r["output"]} for r in ordered])
    return {str(r["id"]): r["output"] for r in ordered}


def _sample_chunk(generator, chunk: list[dict], seeds: list[int], done: set[str]) -> list:
    """One sample per instruction of the chunk. A batching backend (`sample_batch`) decodes the whole
    chunk, as an uninterrupted run would; others sample only the missing ones (None for the rest)."""
    texts = [it["instruction"] for it in chunk]
    if hasattr(generator, "sample_batch"):
        return [samples[0] for samples in generator.sample_batch(texts, 1, seeds)]
    return [None if str(it["id"]) in done else generator.sample(text, 1, seed)[0]
            for it, text, seed in zip(chunk, texts, seeds)]


def _make_generator(spec: str, decoding: Decoding, device: str, dtype: str):
    from icr.config import GenerateConfig
    from icr.generate import GeneratorSpec, open_generator

    config = GenerateConfig(temperature=decoding.temperature, top_p=decoding.top_p,
                            max_new_tokens=decoding.max_new_tokens, backend=decoding.backend,
                            batch_prompts=max(1, decoding.batch_size))
    return open_generator(GeneratorSpec(spec, device, dtype), config)  # vLLM: in a child process


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---------------------------------------------------------------- the whole evaluation


def evaluate(models: list[EvalModel], languages: list[str], prompts: str, out_dir: str | Path,
             make_judge: Callable[[], Judge], reference: str | None = None, cache_dir: str | Path | None = None,
             limit: int | None = None, order: str = "random", decoding: Decoding = Decoding(),
             lc_data: str | None = None, lc: bool = True, device: str = "auto", dtype: str = "auto",
             estimate_only: bool = False) -> pd.DataFrame:
    """Outputs (generated or read), judgements (cached), metrics and leaderboard files.
    Returns the long results table (one row per model and language)."""
    out = Path(out_dir)
    names = [safe_name(m.name) for m in models]
    if len(set(names)) != len(names):
        raise DataError(f"model names must be unique (as folder names): {names}")
    prompt_dir, reference_dir = resolve_sources(prompts, reference)
    bench = {lang: load_benchmark(prompt_dir, reference_dir, lang, limit) for lang in languages}
    outputs: dict[tuple[str, str], dict[str, str]] = {}
    shard = current_shard()  # under `accelerate launch`, output generation is split across processes
    for model in models:
        if model.outputs:
            for lang in languages:
                outputs[model.name, lang] = read_outputs(model.outputs, lang, bench[lang])
            continue
        generator = None
        for lang in languages:
            folder = out / "outputs" / safe_name(model.name) / lang
            done = {str(r.get("id")) for r in read_jsonl(folder / "generations.jsonl", repair=True)}
            if generator is None and any(str(it["id"]) not in done for it in bench[lang]):
                generator = _make_generator(model.spec, decoding, device, dtype)
            outputs[model.name, lang] = generate_outputs(generator, model, lang, bench[lang], folder, decoding,
                                                         shard)
        close_generator(generator)  # a vLLM child process exits here, with its GPU memory
        del generator
        _free_memory()
    if not shard.is_main:  # judging and metrics: the main process alone
        return pd.DataFrame()
    items = [PairItem(m.name, lang, it["id"], it["instruction"], outputs[m.name, lang][str(it["id"])], it["reference"])
             for m in models for lang in languages for it in bench[lang]]
    judge = make_judge()
    cache = JudgementCache(cache_dir or out / "judge_cache")
    results, stats = judge_pairs(judge, cache, items, order=order, seed=decoding.seed, estimate_only=estimate_only)
    gamed, lc_reason = None, None if lc else "disabled (--no-lc)"
    if lc and not estimate_only:
        try:
            gamed = load_gamed_table(lc_data)
        except LCUnavailable as err:
            lc_reason = str(err)
            log.warning("length-controlled win rates not computed: %s", err)
    rows, k = [], 0
    for m in models:
        for lang in languages:
            anns = []
            for it in bench[lang]:
                res = results[k]
                k += 1
                anns.append({"id": it["id"], "instruction": it["instruction"], "output_1": it["reference"],
                             "output_2": outputs[m.name, lang][str(it["id"])], "generator_1": it["reference_generator"],
                             "generator_2": m.name, "annotator": judge.judge_id,
                             "preference": None if res.p_model is None else 1.0 + res.p_model,
                             "n_judgements": res.n_judgements, "rule": res.rule})
            if estimate_only:
                continue
            write_json_atomic(out / "annotations" / safe_name(m.name) / f"{lang}.json", anns)
            frame = pd.DataFrame(anns).astype({"preference": float})
            rows.append({"model": m.name, "lang": lang, **summarize(frame, lang, gamed, lc_reason)})
    table = pd.DataFrame(rows)
    if estimate_only:
        return table
    meta = {"judge": judge.describe(), "judging": {**stats, "order": order, "seed": decoding.seed},
            "reference": sorted({it["reference_generator"] for b in bench.values() for it in b}),
            "prompts": str(prompt_dir), "reference_outputs": str(reference_dir), "languages": list(languages),
            "limit": limit, "n_instructions": {lang: len(b) for lang, b in bench.items()},
            "decoding": asdict(decoding), "models": [asdict(m) for m in models], "lc_data": lc_data,
            "lc_unavailable": lc_reason, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_results(table, meta, out)
    return table


# ---------------------------------------------------------------- leaderboard


def leaderboard_frame(table: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Rows = models (in evaluation order), columns = language × {LC, WR, n} plus Avg LC, Avg WR."""
    models = list(dict.fromkeys(table["model"]))
    rows = []
    for m in models:
        sub = table[table["model"] == m].set_index("lang")
        row: dict[str, Any] = {"model": m}
        for lang in languages:
            row[f"{lang} LC"] = sub.at[lang, "lc_win_rate"]
            row[f"{lang} WR"] = sub.at[lang, "win_rate"]
            row[f"{lang} n"] = int(sub.at[lang, "n_pairs"])  # judged pairs behind the WR
        row["Avg LC"] = sub.loc[languages, "lc_win_rate"].mean(skipna=False)
        row["Avg WR"] = sub.loc[languages, "win_rate"].mean(skipna=False)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def _fmt(value: float, suffix: str = "") -> str:
    return "n/a" if pd.isna(value) else f"{value:.1f}{suffix}"


def leaderboard_markdown(table: pd.DataFrame, meta: dict[str, Any]) -> str:
    """Table 2 layout (LC and WR per language, then the averages; n = judged pairs after each WR),
    then a detail table and the settings that produced it."""
    languages = meta["languages"]
    board = leaderboard_frame(table, languages)
    subset = any(str(s).startswith("subset") for s in table["lc_scope"])
    mark = "*" if subset else ""
    head = ["Model"] + [f"{lang} {c}" for lang in languages for c in ("LC", "WR")] + ["Avg LC", "Avg WR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, row in board.iterrows():
        cells = [str(model)]
        for lang in languages:
            cells += [_fmt(row[f"{lang} LC"], mark), f"{_fmt(row[f'{lang} WR'])} (n={int(row[f'{lang} n'])})"]
        cells += [_fmt(row["Avg LC"], mark), _fmt(row["Avg WR"])]
        lines.append("| " + " | ".join(cells) + " |")
    judge, judging = meta["judge"], meta["judging"]
    rules = {"logprobs": "log-probabilities of 'A'/'B'", "sampled": "sampled verdict"}
    notes = [
        f"Judge: {judge['backend']} `{judge['model']}` (served as "
        f"{', '.join(f'`{m}`' for m in judging.get('served_models', [])) or '?'}); verdict rule: "
        f"{', '.join(rules.get(r, r) for r in judging.get('rules', [])) or 'n/a'}; prompt {judge['prompt_version']}; "
        f"order: {judging['order']}. Reference: {', '.join(meta['reference'])}.",
        "WR = win rate against the reference, ties as half; n = judged pairs. LC = alpaca_eval's "
        "length-controlled win rate.",
    ]
    if subset:
        notes.append("\\* LC computed on a subset of the 805 instructions (--limit): the GLM is alpaca_eval's, "
                     "but the numbers are not comparable with full-benchmark LC.")
    if meta.get("lc_unavailable"):
        notes.append(f"LC n/a: {meta['lc_unavailable']}")
    detail = ["| Model | Lang | n | W/L/T | invalid | WR ± SE | LC ± SE | LC scope | avg len | ref len | fidelity |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        detail.append(f"| {r.model} | {r.lang} | {r.n_pairs} | {r.n_wins}/{r.n_losses}/{r.n_draws} | {r.n_invalid} | "
                      f"{_fmt(r.win_rate)} ± {_fmt(r.standard_error)} | {_fmt(r.lc_win_rate)} ± "
                      f"{_fmt(r.lc_standard_error)} | {r.lc_scope} | {r.avg_length:.0f} | {r.ref_avg_length:.0f} | "
                      f"{_fmt(r.language_fidelity, '%')} |")
    return "\n".join(["# X-AlpacaEval leaderboard", "", *lines, "", *notes, "", "## Details", "", *detail, ""])


def plot_leaderboard(table: pd.DataFrame, languages: list[str], path: Path) -> None:
    """Grouped bars: LC win rate (WR where LC is n/a) per language and on average, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    board = leaderboard_frame(table, languages)
    use_lc = not board[[f"{lang} LC" for lang in languages]].isna().any().any()
    kind = "LC" if use_lc else "WR"
    cols = [f"{lang} {kind}" for lang in languages] + [f"Avg {kind}"]
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(board))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols)), 4))
    for k, (model, row) in enumerate(board.iterrows()):
        ax.bar(x + (k - (len(board) - 1) / 2) * width, row[cols].astype(float).to_numpy(), width, label=str(model))
    ax.set_xticks(x, [*languages, "Avg"])
    ax.set_ylabel(f"{'length-controlled ' if use_lc else ''}win rate vs reference (%)")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    ax.set_title("X-AlpacaEval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(table: pd.DataFrame, meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}  # NaN -> null
               for r in table.to_dict(orient="records")]
    write_json_atomic(out / "results.json", {**meta, "results": records})
    table.to_csv(out / "results.csv", index=False)
    leaderboard_frame(table, meta["languages"]).round(4).to_csv(out / "leaderboard.csv")
    (out / "leaderboard.md").write_text(leaderboard_markdown(table, meta), encoding="utf-8")
    plot_leaderboard(table, meta["languages"], out / "leaderboard.png")
