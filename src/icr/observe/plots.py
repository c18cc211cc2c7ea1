"""The report's figures (matplotlib, Agg backend): one function per PNG, from plain rows."""

from __future__ import annotations

import math
from pathlib import Path

ITERATION_PANELS = (
    ("pairs", "pairs kept"),
    ("alpha", "α (length control)"),
    ("mean_len", "mean length: chosen (—) / rejected (--)"),
    ("mean_margin", "mean score margin (chosen − rejected)"),
    ("target_language_share", "responses in the target language"),
)
TRAINING_PANELS = (
    ("dpo_loss", "DPO term  −log σ(β·Δ)"),
    ("nll_loss", "NLL term (chosen, token mean)"),
    ("rewards/margins", "reward margin β·Δ log-ratio"),
    ("rewards/accuracies", "reward accuracy"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _count_axis(ax) -> None:
    """Whole-number x ticks (iterations, steps), even for a single point (matplotlib would put
    fractional ticks around it), and plain y labels (no '1e-8 + 0.693' offset)."""
    _integer_ticks(ax.xaxis)
    low, high = ax.dataLim.intervalx
    if high - low < 2:  # MaxNLocator falls back to fractional ticks around one or two whole numbers
        ax.set_xlim(low - 0.5, high + 0.5)
        ax.set_xticks(range(math.ceil(low), math.floor(high) + 1))
    ax.ticklabel_format(axis="y", useOffset=False)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot_iterations(rows: list[dict], path: Path) -> None:
    """Per-language lines over iterations: pairs, α, lengths, margin, target-language share."""
    plt = _pyplot()
    langs = sorted({r["lang"] for r in rows})
    fig, axes = plt.subplots(1, len(ITERATION_PANELS), figsize=(3.2 * len(ITERATION_PANELS), 3.3))
    for ax, (key, title) in zip(axes, ITERATION_PANELS):
        for k, lang in enumerate(langs):
            mine = sorted((r for r in rows if r["lang"] == lang), key=lambda r: r["iteration"])
            xs = [r["iteration"] for r in mine]
            color = f"C{k}"
            if key == "mean_len":
                ax.plot(xs, [r["mean_len_chosen"] for r in mine], marker="o", color=color, label=lang)
                ax.plot(xs, [r["mean_len_rejected"] for r in mine], marker="x", ls="--", color=color)
            else:
                ax.plot(xs, [r[key] for r in mine], marker="o", color=color, label=lang)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        _count_axis(ax)
    _integer_ticks(axes[0].yaxis)  # pairs are counted
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_pair_outcomes(rows: list[dict], path: Path) -> None:
    """Stacked bars per iteration and language: prompts that became pairs, and drops by reason."""
    plt = _pyplot()
    reasons = sorted({reason for r in rows for reason in r["dropped"]})
    labels = [f"{r['iteration']}·{r['lang']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(rows) + 2), 3.4))
    bottom = [0.0] * len(rows)
    for name, values in [("pair kept", [r["pairs"] for r in rows])] + [
        (reason, [r["dropped"].get(reason, 0) for r in rows]) for reason in reasons
    ]:
        ax.bar(range(len(rows)), values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(rows)), labels, rotation=45 if len(rows) > 8 else 0, fontsize=8)
    ax.set_xlabel("iteration · language")
    ax.set_ylabel("prompts")
    _integer_ticks(ax.yaxis)
    ax.set_title("What became of each prompt", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)


def plot_training(curves: dict[int, list[dict]], path: Path) -> None:
    """Training curves per iteration (x = optimizer step): the DPO and NLL terms of the loss (own
    panels: their scales differ by an order of magnitude), reward margin and accuracy."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(3.6 * len(TRAINING_PANELS), 3.3))
    for ax, (key, title) in zip(axes, TRAINING_PANELS):
        for t, points in sorted(curves.items()):
            pts = [(p["step"], p[key]) for p in points if p.get(key) is not None]
            if pts:
                ax.plot(
                    [s for s, _ in pts],
                    [v for _, v in pts],
                    color=f"C{t}",
                    marker="." if len(pts) < 30 else None,
                    label=f"iteration {t}",
                )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        _count_axis(ax)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_accuracy(accuracy: dict, path: Path) -> None:
    """Held-out implicit-reward accuracy per language and rewarding mode, with 95% intervals."""
    plt = _pyplot()
    modes = list(accuracy["multilingual"])
    langs = sorted(accuracy["multilingual"][modes[0]])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        rows = [accuracy["multilingual"][mode][lang] for lang in langs]
        xs = [i + k * width for i in range(len(langs))]
        ys = [100 * r["accuracy"] for r in rows]
        err = [
            [100 * (r["accuracy"] - r["ci_low"]) for r in rows],
            [100 * (r["ci_high"] - r["accuracy"]) for r in rows],
        ]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=mode)
    en = accuracy["english"]["implicit_reward"]["accuracy"]
    ax.axhline(100 * en, color="k", ls="--", lw=1, label=f"English held-out ({100 * en:.0f}%)")
    ax.axhline(50, color="grey", ls=":", lw=1)
    ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(langs))], langs)
    ax.set_ylabel("implicit-reward accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Held-out pairs: crosslingual vs multilingual rewarding (95% CI)")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
