"""Reports: `icr report RUN_DIR` for any run, and the demo's report built on it.

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

from icr.data import read_json, write_json_atomic, write_text_atomic
from icr.plots import plot_accuracy, plot_iterations, plot_pair_outcomes, plot_training
from icr.stages import STAGES
from icr.status import run_status, status_json

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


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _iteration_folders(root: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("iter_")) for p in root.glob("iter_*") if p.name[5:].isdigit())


def pair_rows(root: Path) -> list[dict]:
    """One row per iteration and language, from `iter_<t>/pairs_stats.json`."""
    rows = []
    for t in _iteration_folders(root):
        path = root / f"iter_{t}" / "pairs_stats.json"
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
    out = {}
    for t in _iteration_folders(root):
        path = root / f"iter_{t}" / "model" / "train_metrics.json"
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
    root = Path(root)
    status = status_json(run_status(root, list(STAGES)))  # refuses a folder that is not a run's
    manifest = read_json(root / "manifest.json") if (root / "manifest.json").exists() else {}
    config = {}
    if (root / "config.yaml").exists():
        import yaml

        config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {}
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
            f"{_num(r['mean_margin'], 3)} | {_num(r['alpha'], 4)} | {_pct(r['target_language_share'])} |"
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
            f"{_pct(a.get('reward_accuracy'))} | {runtime} |"
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
    out = Path(out_dir) if out_dir else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(root, Path(eval_dir) if eval_dir else None)
    lines = _run_header(data) + run_sections(data, out)
    write_json_atomic(out / "report.json", _finite(data))
    write_text_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------- the demo's report


CAVEATS = """## What this scale can and cannot show

- It shows the method running end to end on real models, offline: a real English DPO model is made,
  its implicit reward is measured, responses are sampled in five languages, scored cross-lingually,
  turned into length-controlled pairs and trained on, twice.
- The accuracies are measured on a few dozen hand-written pairs per language: the 95% intervals are
  wide, and a difference between crosslingual and multilingual rewarding smaller than them is noise.
- SmolLM2-135M is a small, mostly English model; its answers in es/de/fr/ru are often weak or in the
  wrong language, and π_dpo is trained on a few dozen pairs. Nothing here estimates the paper's
  X-AlpacaEval gains (that needs 8B models, thousands of prompts and a strong judge: see
  `configs/paper-llama3-8b.yaml` and `icr eval`).
"""


LENGTH_NOTE = (
    "A summed log-ratio grows with the number of tokens, so it can prefer an answer for its length alone. "
    "*summed* is the paper's reward; *per token* divides it by the scored tokens; the two split columns give "
    "the summed-reward accuracy on the pairs whose chosen answer is the longer one (characters) and on the "
    "others. A reward that tracks preference scores alike on both; one that tracks length scores high on one "
    "and low on the other."
)


def _length_lines(accuracy: dict) -> list[str]:
    """The held-out accuracies under the summed and per-token reward, split by which answer is longer."""
    lines = [
        "### Preference or length?",
        "",
        LENGTH_NOTE,
        "",
        (
            "| pairs | mode | lang | n | summed | per token | chosen longer (n) | chosen not longer (n) | "
            "mean chars chosen / rejected |"
        ),
        "|---" * 9 + "|",
    ]
    tables = [("English held-out", "crosslingual", accuracy["english"]["implicit_reward"], "en")]
    tables += [
        ("multilingual held-out", mode, r, lang)
        for mode, per_lang in accuracy["multilingual"].items()
        for lang, r in sorted(per_lang.items())
    ]
    for source, mode, r, lang in tables:
        if "per_token" not in r:  # an accuracy file written before these numbers existed
            continue
        longer, other = r["chosen_longer"], r["chosen_not_longer"]
        lines.append(
            f"| {source} | {mode} | {lang} | {r['n']} | {_pct(r['accuracy'])} | "
            f"{_pct(r['per_token']['accuracy'])} | {_pct(longer['accuracy'])} ({longer['n']}) | "
            f"{_pct(other['accuracy'])} ({other['n']}) | {r['mean_len_chosen']:.0f} / "
            f"{r['mean_len_rejected']:.0f} |"
        )
    return lines + [""]


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


def _demo_sections(stage0: dict, accuracy: dict) -> list[str]:
    en = accuracy["english"]
    lines = [
        "## Stage 0: English DPO (π_dpo from π_ref = SmolLM2-135M-Instruct)",
        "",
        f"{stage0['pairs']} English pairs, {stage0['steps']} optimizer steps. On the training pairs the DPO "
        f"loss went from {stage0['before']['dpo_loss']:.4f} to {stage0['after']['dpo_loss']:.4f}.",
        "",
        "English held-out pairs (n = {n}):".format(n=en["implicit_reward"]["n"]),
        "",
        "| scorer | accuracy |",
        "|---|---|",
        f"| π_ref log-likelihood | {_pct(en['likelihood_pi_ref'])} |",
        f"| π_dpo log-likelihood | {_pct(en['likelihood_pi_dpo'])} |",
        f"| implicit reward β·log π_dpo/π_ref | {_pct(en['implicit_reward']['accuracy'])} "
        f"[{_pct(en['implicit_reward']['ci_low'])}, {_pct(en['implicit_reward']['ci_high'])}] |",
        "",
        "## Cross-lingual vs multilingual rewarding (held-out pairs)",
        "",
        "| lang | n | crosslingual | multilingual |",
        "|---|---|---|---|",
    ]
    multi = accuracy["multilingual"]
    for lang in sorted(multi["crosslingual"]):
        c, m = multi["crosslingual"][lang], multi["multilingual"][lang]
        lines.append(
            f"| {lang} | {c['n']} | {_pct(c['accuracy'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}] | "
            f"{_pct(m['accuracy'])} [{_pct(m['ci_low'])}, {_pct(m['ci_high'])}] |"
        )
    return lines + ["", "![reward accuracy](reward_accuracy.png)", ""]


def write_report(output_dir: Path, run, accuracy: dict, timings: dict, quick: bool) -> Path:
    """The demo's report.json, report.md and plots: stage 0 and the reward accuracies, then the
    sections of `icr report` for the demo's run (same code, same figures); returns report.md."""
    data = collect(run.root)
    stage0 = read_json(output_dir / "models" / "pi_dpo" / "train_metrics.json")
    stage0 = {k: stage0[k] for k in ("pairs", "steps", "before", "after")}
    training = {t: {k: v for k, v in m.items() if k != "curve"} for t, m in data["training"].items()}
    write_json_atomic(
        output_dir / "report.json",
        _finite(
            {
                "quick": quick,
                "accuracy": accuracy,
                "iterations": data["iterations"],
                "training": training,
                "stage0": stage0,
                "timings_s": timings,
                "run_dir": str(run.root),
                "versions": data["versions"],
                "language_filter": run.config.pairs.language_filter,
                "language_filter_effect": language_filter_effect(data["iterations"]),
            }
        ),
    )
    plot_accuracy(accuracy, output_dir / "reward_accuracy.png")
    lines = [
        f"# ICR demo report{' (quick)' if quick else ''}",
        "",
        "Every number below was computed by this run (`report.json` holds them all). The ICR sections "
        f"are `icr report {run.root}`'s.",
        "",
    ]
    lines += _demo_sections(stage0, accuracy) + _length_lines(accuracy) + run_sections(data, output_dir)
    lines += ["Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), "", CAVEATS]
    path = output_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
