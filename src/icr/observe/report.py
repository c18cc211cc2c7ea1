"""`icr report RUN_DIR`: the report of any run (the demo's report, `icr.demo.report`, builds on it).

A run report reads only the run folder (and, when given or present at `<run>/eval`, the output
folder of `icr eval`) and writes, by default into `<run>/report/`:

    report.md        per iteration and language: prompts, pairs kept, drops by reason, α, chosen and
                     rejected lengths, reward margin, target-language share; training; leaderboard
    report.json      every number in it
    pairs.png        what became of each prompt (pair kept / drop reason), per iteration and language
    iterations.png   pairs, α, lengths, margin, target-language share over iterations
    training.png     loss, DPO and NLL terms, reward margin and accuracy per optimizer step
    leaderboard.png  X-AlpacaEval, the paper's Table 2 (when eval results exist)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from icr.core.io import read_json, write_json_atomic, write_text_atomic
from icr.observe.plots import plot_iterations, plot_pair_outcomes, plot_training
from icr.observe.status import run_status, status_json
from icr.runtime.layout import RunLayout
from icr.stages import STAGES

PAIR_COLUMNS = (
    "prompts",
    "pairs",
    "dropped",
    "length_unit",
    "mean_len_chosen",
    "mean_len_rejected",
    "mean_margin",
    "alpha",
    "target_language_share",
)
CURVE_KEYS = ("loss", "dpo_loss", "nll_loss", "rewards/margins", "rewards/accuracies", "learning_rate")


def percent(x: float | None) -> str:
    """A share as a percentage with one decimal; "n/a" for a missing or NaN value."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def pair_rows(root: Path) -> list[dict]:
    """One row per iteration and language, from `iter_<t>/pairs_stats.json`."""
    rows, layout = [], RunLayout(root)
    for t in layout.iterations():
        path = layout.pairs_stats_file(t)
        if path.exists():
            for lang, stats in read_json(path).items():
                effect = stats.get("language_filter_effect") or {}
                rows.append(
                    {
                        "iteration": t,
                        "lang": lang,
                        **{k: stats.get(k) for k in PAIR_COLUMNS},
                        "pairs_differing_off_vs_all": effect.get("differing_pairs_off_vs_all"),
                    }
                )
    for row in rows:
        row["dropped"] = row["dropped"] or {}
    return rows


def training_summaries(root: Path) -> dict[int, dict]:
    """Per trained iteration: pairs, steps, runtime, DPO/NLL terms before and after, and the
    per-step curves of `train_metrics.json`'s log history."""
    out, layout = {}, RunLayout(root)
    for t in layout.iterations():
        path = layout.train_metrics_file(t)
        if not path.exists():
            continue
        m = read_json(path)
        curve = [
            {"step": e["step"], **{k: e.get(k) for k in CURVE_KEYS}}
            for e in m.get("log_history", [])
            if "loss" in e and "step" in e
        ]
        out[t] = {
            "pairs": m["pairs"],
            "steps": m["steps"],
            "runtime_s": m.get("train_runtime_s"),
            "before": m["before"],
            "after": m.get("after"),
            "curve": curve,
        }
    return out


def eval_results(eval_dir: Path | None) -> dict | None:
    """`icr eval`'s results.json, if the folder has one."""
    if eval_dir is None or not (Path(eval_dir) / "results.json").exists():
        return None
    return read_json(Path(eval_dir) / "results.json")


def collect(root: Path, eval_dir: Path | None = None) -> dict[str, Any]:
    """Every number of a run report, read from the run folder (and the eval folder)."""
    root, layout = Path(root), RunLayout(root)
    status = status_json(run_status(root, list(STAGES)))  # refuses a folder that is not a run's
    manifest = read_json(layout.manifest_file) if layout.manifest_file.exists() else {}
    config = {}
    if layout.config_file.exists():
        import yaml

        config = yaml.safe_load(layout.config_file.read_text(encoding="utf-8")) or {}
    if eval_dir is None and (root / "eval" / "results.json").exists():
        eval_dir = root / "eval"
    return {
        "run_dir": str(root),
        "config": config,
        "status": status,
        "versions": manifest.get("versions", {}),
        "iterations": pair_rows(root),
        "training": training_summaries(root),
        "eval": eval_results(eval_dir),
        "eval_dir": str(eval_dir) if eval_dir else None,
    }


def _drops(dropped: dict) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items())) or "—"


def pairs_table(rows: list[dict]) -> list[str]:
    unit = rows[0]["length_unit"] if rows else "chars"
    lines = [
        f"| iter | lang | prompts | pairs | dropped (reason n) | len chosen ({unit}) | len rejected | margin | "
        "α | in target lang |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        lines.append(
            f"| {r['iteration']} | {r['lang']} | {r['prompts']} | {r['pairs']} | {_drops(r['dropped'])} | "
            f"{_num(r['mean_len_chosen'], 1)} | {_num(r['mean_len_rejected'], 1)} | "
            f"{_num(r['mean_margin'], 3)} | {_num(r['alpha'], 4)} | {percent(r['target_language_share'])} |"
        )
    return lines


def training_table(training: dict[int, dict]) -> list[str]:
    lines = [
        "| iteration | pairs | steps | DPO loss before → after | NLL before → after | reward margin after | "
        "reward acc. after | time |",
        "|" + "---|" * 8,
    ]
    for t, m in sorted(training.items()):
        b, a = m["before"], m["after"] or {}
        runtime = f"{m['runtime_s']:.3g} s" if m.get("runtime_s") else "n/a"
        lines.append(
            f"| {t} | {m['pairs']} | {m['steps']} | {_num(b['dpo_loss'], 4)} → {_num(a.get('dpo_loss'), 4)} | "
            f"{_num(b['nll_loss'], 3)} → {_num(a.get('nll_loss'), 3)} | {_num(a.get('reward_margin'), 3)} | "
            f"{percent(a.get('reward_accuracy'))} | {runtime} |"
        )
    return lines


def leaderboard_section(results: dict, out_dir: Path) -> list[str]:
    """The paper's Table 2 layout (`icr.eval.leaderboard`) and its plot, from `icr eval`'s results."""
    import pandas as pd

    from icr.eval.leaderboard import leaderboard_markdown, plot_leaderboard

    table = pd.DataFrame(results["results"])
    board = leaderboard_markdown(table, results).split("\n## Details")[0]
    plot_leaderboard(table, results["languages"], out_dir / "leaderboard.png")
    body = board.removeprefix("# X-AlpacaEval leaderboard").strip()
    return ["## X-AlpacaEval (paper's Table 2 layout)", "", body, "", "![leaderboard](leaderboard.png)", ""]


def language_filter_effect(rows: list[dict]) -> dict:
    """Pairs that differ between `language_filter: off` (the paper) and `all` (the old default),
    summed over the run's iterations and languages, from pairs_stats.json."""
    counted = [r for r in rows if r.get("pairs_differing_off_vs_all") is not None]
    return {
        "differing_pairs": sum(r["pairs_differing_off_vs_all"] for r in counted),
        "pairs": sum(r["pairs"] for r in counted),
        "iteration_languages": len(counted),
    }


def _language_filter_lines(rows: list[dict], pairs_config: dict) -> list[str]:
    """How many pairs `pairs.language_filter` changed (from pairs_stats.json), when the run recorded it."""
    effect, setting = language_filter_effect(rows), pairs_config.get("language_filter")
    if not effect["iteration_languages"]:
        return []
    return [
        (
            f"Language filter: this run used `pairs.language_filter: {setting}`. Over its iterations and "
            f"languages, {effect['differing_pairs']} of the prompts' pairs differ between `off` (the paper: "
            f"off-language responses ranked like any other) and `all` (off-language responses dropped before "
            f"selection, the old default): a pair present under one setting only, or with another chosen or "
            f"rejected answer ({effect['pairs']} pairs kept under this run's setting); per iteration and "
            f"language in `pairs_stats.json` (`language_filter_effect`) and the run's `summary.md`."
        ),
        "",
    ]


def run_sections(data: dict, out_dir: Path) -> list[str]:
    """Markdown sections (## headings) of a run report; writes their PNGs into `out_dir`."""
    rows, training = data["iterations"], data["training"]
    lines = ["## Pairs per iteration and language", ""]
    if rows:
        plot_pair_outcomes(rows, out_dir / "pairs.png")
        plot_iterations(rows, out_dir / "iterations.png")
        lines += pairs_table(rows) + [
            "",
            "Margin: mean length-controlled score of chosen − rejected. In target "
            "lang: share of all sampled responses detected as the prompt's language.",
            "",
            *_language_filter_lines(rows, data["config"].get("pairs", {})),
            "![pair outcomes](pairs.png)",
            "",
            "![iterations](iterations.png)",
            "",
        ]
    else:
        lines += ["No iteration has finished its pairs stage yet.", ""]
    lines += ["## Training", ""]
    if training:
        lines += training_table(training) + [
            "",
            "Before/after: on the iteration's own pairs, the policy starting as "
            "its reference (DPO = log 2). Curves: TRL's log per optimizer step "
            "(`train_metrics.json`).",
            "",
        ]
        if any(m["curve"] for m in training.values()):  # a metrics file without a log history has no curve
            plot_training({t: m["curve"] for t, m in training.items()}, out_dir / "training.png")
            lines += ["![training](training.png)", ""]
    else:
        lines += ["No iteration has finished training yet.", ""]
    if data.get("eval"):
        lines += leaderboard_section(data["eval"], out_dir)
    return lines


def _run_header(data: dict) -> list[str]:
    c = data["config"]
    models, gen, reward = c.get("models", {}), c.get("generate", {}), c.get("reward", {})
    done = sum(s["state"] == "done" for s in data["status"])
    return [
        f"# Run report: {c.get('name', Path(data['run_dir']).name)}",
        "",
        f"Run folder `{data['run_dir']}`; {done}/{len(data['status'])} stages done (`icr status` for detail). "
        f"π^0 `{models.get('policy')}`, π_ref `{models.get('reference')}`; languages "
        f"{', '.join(c.get('data', {}).get('languages', []))}; N = {gen.get('n')} at T = {gen.get('temperature')}; "
        f"reward mode {reward.get('mode')}; {c.get('iterations')} iterations.",
        "",
    ]


def write_run_report(root: str | Path, out_dir: str | Path | None = None, eval_dir: str | Path | None = None) -> Path:
    """`icr report`: report.md, report.json and the PNGs of the run in `root`; returns report.md."""
    root = Path(root)
    out = Path(out_dir) if out_dir else RunLayout(root).report_dir
    out.mkdir(parents=True, exist_ok=True)
    data = collect(root, Path(eval_dir) if eval_dir else None)
    lines = _run_header(data) + run_sections(data, out)
    write_json_atomic(out / "report.json", json_safe(data))
    write_text_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"


def json_safe(obj):
    """JSON-safe copy: NaN/inf become None, keys become strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
