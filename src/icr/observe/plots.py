"""The report's figures (matplotlib, Agg backend): one function per PNG, from plain rows. Every
panel has a labelled y axis with its unit, shares are percentages, and legends sit outside the
data, so a figure reads the same for 8 prompts or 8,000. Each function returns its (closed) figure."""

from __future__ import annotations

import math
from pathlib import Path

# (row key, title, y label; {unit} is the run's pairs.length_unit)
ITERATION_PANELS = (
    ("pairs", "pairs kept", "pairs"),
    ("alpha", "α (length control)", "nats per {unit_one}"),
    ("mean_len", "mean length: chosen (—) / rejected (--)", "{unit}"),
    ("mean_margin", "mean score margin (chosen − rejected)", "nats"),
    ("target_language_share", "responses in the target language", "%"),
)
PERCENT_KEYS = {"target_language_share", "rewards/accuracies"}
TRAINING_PANELS = (
    ("dpo_loss", "DPO term  −log σ(β·Δ)", "nats"),
    ("nll_loss", "NLL term (chosen, token mean)", "nats per token"),
    ("rewards/margins", "reward margin β·Δ log-ratio", "nats"),
    ("rewards/accuracies", "reward accuracy (next batch)", "%"),
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


SMOOTH_FROM = 200  # steps from which a training panel adds a running mean


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and up to `window` − 1 before it (same length as `values`)."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def _value(row: dict, key: str) -> float | None:
    value = row.get(key)
    return 100 * value if key in PERCENT_KEYS and value is not None else value


def _percent_axis(ax) -> None:
    ax.set_ylim(0, 100)


def _legend_outside(fig, ax) -> None:
    """One legend right of the panels (never over the data), if anything is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))


def _save(fig, path: Path):
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return fig


def plot_iterations(rows: list[dict], path: Path):
    """Per-language lines over iterations: pairs, α, lengths, margin, target-language share (%)."""
    plt = _pyplot()
    langs = sorted({r["lang"] for r in rows})
    unit = next((r["length_unit"] for r in rows if r.get("length_unit")), "chars")
    fig, axes = plt.subplots(1, len(ITERATION_PANELS), figsize=(3.2 * len(ITERATION_PANELS), 3.3))
    for ax, (key, title, ylabel) in zip(axes, ITERATION_PANELS):
        for k, lang in enumerate(langs):
            mine = sorted((r for r in rows if r["lang"] == lang), key=lambda r: r["iteration"])
            xs = [r["iteration"] for r in mine]
            color = f"C{k}"
            if key == "mean_len":
                ax.plot(xs, [r["mean_len_chosen"] for r in mine], marker="o", color=color, label=lang)
                ax.plot(xs, [r["mean_len_rejected"] for r in mine], marker="x", ls="--", color=color)
            else:
                ax.plot(xs, [_value(r, key) for r in mine], marker="o", color=color, label=lang)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel.format(unit=unit, unit_one=unit.removesuffix("s")))
        _count_axis(ax)
        if key in PERCENT_KEYS:
            _percent_axis(ax)
    _integer_ticks(axes[0].yaxis)  # pairs are counted
    _legend_outside(fig, axes[0])
    return _save(fig, path)


def plot_pair_outcomes(rows: list[dict], path: Path):
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
    return _save(fig, path)


def plot_training(curves: dict[int, list[dict]], path: Path):
    """Training curves per iteration: the DPO and NLL terms of the loss (own panels: their scales
    differ by an order of magnitude), reward margin and accuracy (%). TRL computes the metrics it logs
    at step k on step k's batch before that step's update, so with the weights of k − 1 updates: each
    value is drawn at x = k − 1, the updates applied (0: the model before training), and reads as
    "after that many updates, on a batch not yet trained on"."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(3.6 * len(TRAINING_PANELS), 3.3))
    for ax, (key, title, ylabel) in zip(axes, TRAINING_PANELS):
        for t, points in sorted(curves.items()):
            pts = [(p["step"] - 1, _value(p, key)) for p in points if p.get(key) is not None]
            if not pts:
                continue
            steps, values = [s for s, _ in pts], [v for _, v in pts]
            if len(pts) < SMOOTH_FROM:
                ax.plot(steps, values, color=f"C{t}", marker="." if len(pts) < 30 else None, label=f"iteration {t}")
                continue
            # many steps: the per-step values faint, their running mean over ~2% of the steps on top
            ax.plot(steps, values, color=f"C{t}", alpha=0.25, lw=0.6)
            ax.plot(steps, running_mean(values, max(2, len(values) // 50)), color=f"C{t}", label=f"iteration {t}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("updates applied")
        ax.set_ylabel(ylabel)
        _count_axis(ax)
        if key in PERCENT_KEYS:
            _percent_axis(ax)
    _legend_outside(fig, axes[0])
    return _save(fig, path)


def plot_accuracy(accuracy: dict, path: Path):
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
    ax.set_xlabel("language")
    ax.set_title("Held-out pairs: crosslingual vs multilingual rewarding (95% CI)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)
