"""The demo report: report.json (every number), report.md (tables, caveats) and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

from icr.data import read_json, write_json_atomic
from icr.pipeline import summary_rows
from icr.rundir import RunDir


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _plot_accuracy(accuracy: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(accuracy["multilingual"])
    langs = sorted(accuracy["multilingual"][modes[0]])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        rows = [accuracy["multilingual"][mode][lang] for lang in langs]
        xs = [i + k * width for i in range(len(langs))]
        ys = [100 * r["accuracy"] for r in rows]
        err = [[100 * (r["accuracy"] - r["ci_low"]) for r in rows],
               [100 * (r["ci_high"] - r["accuracy"]) for r in rows]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=mode)
    en = accuracy["english"]["implicit_reward"]["accuracy"]
    ax.axhline(100 * en, color="k", ls="--", lw=1, label=f"English held-out ({100 * en:.0f}%)")
    ax.axhline(50, color="grey", ls=":", lw=1)
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(langs))], langs)
    ax.set_ylabel("implicit-reward accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Held-out pairs: crosslingual vs multilingual rewarding (95% CI)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_iterations(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = sorted({r["lang"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    panels = [("pairs", "pairs kept"), ("target_language_share", "responses in target language"),
              ("mean_margin", "mean score margin")]
    for ax, (key, title) in zip(axes, panels):
        for lang in langs:
            pts = sorted((r["iteration"], r[key]) for r in rows if r["lang"] == lang)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lang)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    lines = ["### Preference or length?", "", LENGTH_NOTE, "",
             ("| pairs | mode | lang | n | summed | per token | chosen longer (n) | chosen not longer (n) | "
              "mean chars chosen / rejected |"), "|---" * 9 + "|"]
    tables = [("English held-out", "crosslingual", accuracy["english"]["implicit_reward"], "en")]
    tables += [("multilingual held-out", mode, r, lang) for mode, per_lang in accuracy["multilingual"].items()
               for lang, r in sorted(per_lang.items())]
    for source, mode, r, lang in tables:
        if "per_token" not in r:  # an accuracy file written before these numbers existed
            continue
        longer, other = r["chosen_longer"], r["chosen_not_longer"]
        lines.append(f"| {source} | {mode} | {lang} | {r['n']} | {_pct(r['accuracy'])} | "
                     f"{_pct(r['per_token']['accuracy'])} | {_pct(longer['accuracy'])} ({longer['n']}) | "
                     f"{_pct(other['accuracy'])} ({other['n']}) | {r['mean_len_chosen']:.0f} / "
                     f"{r['mean_len_rejected']:.0f} |")
    return lines + [""]


def language_filter_effect(rows: list[dict]) -> dict:
    """Pairs that differ between `language_filter: off` (the paper) and `all` (the old default),
    summed over the run's iterations and languages, from pairs_stats.json."""
    counted = [r for r in rows if r.get("pairs_differing_off_vs_all") is not None]
    return {"differing_pairs": sum(r["pairs_differing_off_vs_all"] for r in counted),
            "pairs": sum(r["pairs"] for r in counted), "iteration_languages": len(counted)}


def _language_filter_lines(rows: list[dict], setting: str) -> list[str]:
    effect = language_filter_effect(rows)
    return [(f"Language filter: this run used `pairs.language_filter: {setting}`. Over its iterations and "
             f"languages, {effect['differing_pairs']} of the prompts' pairs differ between `off` (the paper: "
             f"off-language responses ranked like any other) and `all` (off-language responses dropped before "
             f"selection, the old default): a pair present under one setting only, or with another chosen or "
             f"rejected answer ({effect['pairs']} pairs kept under this run's setting). The last two columns "
             f"below give it per iteration and language."), ""]


def write_report(output_dir: Path, run: RunDir, accuracy: dict, timings: dict, quick: bool) -> Path:
    """Write report.json, report.md and the plots; return the Markdown path."""
    rows = summary_rows(run)
    train = {}
    for t in range(run.config.iterations):
        metrics_file = run.model_dir(t) / "train_metrics.json"
        if metrics_file.exists():
            m = read_json(metrics_file)
            train[t] = {"pairs": m["pairs"], "steps": m["steps"], "before": m["before"], "after": m["after"]}
    stage0 = read_json(output_dir / "models" / "pi_dpo" / "train_metrics.json")
    data = {"quick": quick, "accuracy": accuracy, "iterations": rows, "training": train,
            "stage0": {"pairs": stage0["pairs"], "steps": stage0["steps"], "before": stage0["before"],
                       "after": stage0["after"]},
            "timings_s": timings, "run_dir": str(run.root), "versions": run.manifest.get("versions", {}),
            "language_filter": run.config.pairs.language_filter, "language_filter_effect": language_filter_effect(rows)}
    write_json_atomic(output_dir / "report.json", data)
    _plot_accuracy(accuracy, output_dir / "reward_accuracy.png")
    _plot_iterations(rows, output_dir / "iterations.png")

    en = accuracy["english"]
    lines = [f"# ICR demo report{' (quick)' if quick else ''}", "",
             "Every number below was computed by this run (`report.json` holds them all).", "",
             "## Stage 0: English DPO (π_dpo from π_ref = SmolLM2-135M-Instruct)", "",
             f"{stage0['pairs']} English pairs, {stage0['steps']} optimizer steps. On the training pairs the DPO "
             f"loss went from {stage0['before']['dpo_loss']:.4f} to {stage0['after']['dpo_loss']:.4f}.", "",
             "English held-out pairs (n = {n}):".format(n=en["implicit_reward"]["n"]), "",
             "| scorer | accuracy |", "|---|---|",
             f"| π_ref log-likelihood | {_pct(en['likelihood_pi_ref'])} |",
             f"| π_dpo log-likelihood | {_pct(en['likelihood_pi_dpo'])} |",
             f"| implicit reward β·log π_dpo/π_ref | {_pct(en['implicit_reward']['accuracy'])} "
             f"[{_pct(en['implicit_reward']['ci_low'])}, {_pct(en['implicit_reward']['ci_high'])}] |", "",
             "## Cross-lingual vs multilingual rewarding (held-out pairs)", "",
             "| lang | n | crosslingual | multilingual |", "|---|---|---|---|"]
    multi = accuracy["multilingual"]
    for lang in sorted(multi["crosslingual"]):
        c, m = multi["crosslingual"][lang], multi["multilingual"][lang]
        lines.append(f"| {lang} | {c['n']} | {_pct(c['accuracy'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}] | "
                     f"{_pct(m['accuracy'])} [{_pct(m['ci_low'])}, {_pct(m['ci_high'])}] |")
    lines += ["", "![reward accuracy](reward_accuracy.png)", "", *_length_lines(accuracy), "## ICR iterations", "",
              *_language_filter_lines(rows, run.config.pairs.language_filter),
              (run.root / "summary.md").read_text(encoding="utf-8"), "![iterations](iterations.png)", "",
              "| iteration | pairs | steps | DPO loss before → after | NLL before → after | reward acc. after |",
              "|---|---|---|---|---|---|"]
    for t, m in train.items():
        a = m["after"] or {}
        lines.append(f"| {t} | {m['pairs']} | {m['steps']} | {m['before']['dpo_loss']:.4f} → "
                     f"{a.get('dpo_loss', float('nan')):.4f} | {m['before']['nll_loss']:.3f} → "
                     f"{a.get('nll_loss', float('nan')):.3f} | {_pct(a.get('reward_accuracy'))} |")
    lines += ["", "Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), "", CAVEATS]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
