"""The demo's report (`icr demo`): stage 0 (the English DPO model), the held-out reward accuracies
(crosslingual vs multilingual, preference or length), then `icr report`'s sections for the demo's
run (`icr.observe.report`: same code, same figures), with timings and what this scale can show.
"""

from __future__ import annotations

from pathlib import Path

from icr.core.io import read_json, write_json_atomic, write_text_atomic
from icr.observe.plots import plot_accuracy
from icr.observe.report import collect, json_safe, language_filter_effect, percent, run_sections

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
            f"| {source} | {mode} | {lang} | {r['n']} | {percent(r['accuracy'])} | "
            f"{percent(r['per_token']['accuracy'])} | {percent(longer['accuracy'])} ({longer['n']}) | "
            f"{percent(other['accuracy'])} ({other['n']}) | {r['mean_len_chosen']:.0f} / "
            f"{r['mean_len_rejected']:.0f} |"
        )
    return lines + [""]


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
        f"| π_ref log-likelihood | {percent(en['likelihood_pi_ref'])} |",
        f"| π_dpo log-likelihood | {percent(en['likelihood_pi_dpo'])} |",
        f"| implicit reward β·log π_dpo/π_ref | {percent(en['implicit_reward']['accuracy'])} "
        f"[{percent(en['implicit_reward']['ci_low'])}, {percent(en['implicit_reward']['ci_high'])}] |",
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
            f"| {lang} | {c['n']} | {percent(c['accuracy'])} [{percent(c['ci_low'])}, {percent(c['ci_high'])}] | "
            f"{percent(m['accuracy'])} [{percent(m['ci_low'])}, {percent(m['ci_high'])}] |"
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
        json_safe(
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
