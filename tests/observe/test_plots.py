"""The report's figures (`icr.observe.plots`) from a few items and from many: every panel has a y
label with its unit, shares are percentages on 0–100, legends sit outside the panels."""

from __future__ import annotations

import numpy as np
import pytest

from icr.observe import plots


def iteration_rows(langs: int, iterations: int, prompts: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(iterations):
        for k in range(langs):
            kept = int(rng.integers(prompts // 2, prompts + 1))
            rows.append(
                {
                    "iteration": t,
                    "lang": f"l{k}",
                    "prompts": prompts,
                    "pairs": kept,
                    "dropped": {"margin_too_small": prompts - kept},
                    "length_unit": "chars",
                    "alpha": float(rng.uniform(0, 0.01)),
                    "mean_len_chosen": float(rng.uniform(100, 900)),
                    "mean_len_rejected": float(rng.uniform(100, 900)),
                    "mean_margin": float(rng.uniform(0, 30)),
                    "target_language_share": float(rng.uniform(0.6, 1.0)),
                }
            )
    return rows


def curves(iterations: int, steps: int) -> dict[int, list[dict]]:
    rng = np.random.default_rng(1)
    return {
        t: [
            {
                "step": s,
                "dpo_loss": float(rng.uniform(0.5, 0.7)),
                "nll_loss": float(rng.uniform(1, 3)),
                "rewards/margins": float(rng.normal()),
                "rewards/accuracies": float(rng.uniform(0, 1)),
            }
            for s in range(1, steps + 1)
        ]
        for t in range(iterations)
    }


def legend_is_outside(fig) -> bool:
    """Every legend's box lies right of every panel (no legend over the data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the figure comes back closed: give it a canvas to measure on
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    right = max(ax.get_window_extent(renderer).x1 for ax in fig.axes)
    return bool(legends) and all(legend.get_window_extent(renderer).x0 >= right - 1 for legend in legends)


@pytest.mark.parametrize(("langs", "iterations", "prompts"), [(1, 1, 8), (5, 3, 8000)])
def test_iteration_panels_have_units_percentages_and_an_outside_legend(tmp_path, langs, iterations, prompts):
    rows = iteration_rows(langs, iterations, prompts)
    fig = plots.plot_iterations(rows, tmp_path / "iterations.png")
    assert (tmp_path / "iterations.png").stat().st_size > 0
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["pairs", "nats per char", "chars", "nats", "%"]
    share = fig.axes[-1]
    assert share.get_ylim() == (0, 100)
    plotted = np.concatenate([line.get_ydata() for line in share.get_lines()])
    assert plotted.min() >= 60 and plotted.max() <= 100  # the shares as percentages, not fractions
    assert max(np.concatenate([line.get_ydata() for line in fig.axes[0].get_lines()])) <= prompts
    assert legend_is_outside(fig)
    outcomes = plots.plot_pair_outcomes(rows, tmp_path / "pairs.png")
    (ax,) = outcomes.axes
    assert ax.get_ylabel() == "prompts" and ax.get_ylim()[1] >= prompts
    assert legend_is_outside(outcomes)


@pytest.mark.parametrize(("iterations", "steps"), [(1, 1), (2, 8000)])
def test_training_panels_have_units_and_accuracy_in_percent(tmp_path, iterations, steps):
    fig = plots.plot_training(curves(iterations, steps), tmp_path / "training.png")
    assert [ax.get_ylabel() for ax in fig.axes] == ["nats", "nats per token", "nats", "%"]
    accuracy = fig.axes[-1]
    assert accuracy.get_ylim() == (0, 100)
    assert max(np.concatenate([line.get_ydata() for line in accuracy.get_lines()])) > 1  # percent, not share
    assert accuracy.get_xlim()[1] >= steps - 1 and all(ax.get_xlabel() == "updates applied" for ax in fig.axes)
    # TRL logs step k's metrics from before its update: drawn after k - 1 updates, the first at 0
    assert min(np.concatenate([line.get_xdata() for line in accuracy.get_lines()])) == 0
    assert legend_is_outside(fig)
    if steps >= plots.SMOOTH_FROM:  # per-step values faint, a labelled running mean on top
        lines = accuracy.get_lines()
        assert len(lines) == 2 * iterations and [line.get_label() for line in lines[1::2]] == [
            "iteration 0",
            "iteration 1",
        ]


def test_running_mean_averages_the_window_before_each_value():
    assert plots.running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plots.running_mean([2.0], 5) == [2.0]


def test_accuracy_bars_have_intervals_percent_axis_and_outside_legend(tmp_path):
    row = {"accuracy": 0.6, "ci_low": 0.4, "ci_high": 0.8}
    accuracy = {
        "english": {"implicit_reward": {"accuracy": 0.7}},
        "multilingual": {m: {"es": row, "de": row} for m in ("crosslingual", "multilingual")},
    }
    fig = plots.plot_accuracy(accuracy, tmp_path / "accuracy.png")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "implicit-reward accuracy (%)" and ax.get_ylim() == (0, 100)
    assert ax.get_xlabel() == "language"
    assert len(ax.containers) >= 2  # bars with their error bars (95% intervals)
    assert legend_is_outside(fig)
