"""`icr report` on a real (tiny) 2-iteration run started with `icr run`, with TensorBoard tracking
and an `icr eval` table: every number in report.md comes from the run's files, the figures exist
and count iterations in whole numbers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_judges import write_benchmark
from test_run import _config

import icr.plots
from icr.cli import main
from icr.config import dump_config
from icr.data import read_json
from icr.plan import training_steps
from icr.report import collect


@pytest.fixture(scope="module")
def finished_run(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """`icr run` (which writes the report at the end), then `icr eval` of π0, π1, π2 into <run>/eval."""
    out = tmp_path_factory.mktemp("runs")
    config = _config(out, "rep", tiny_dir, tiny_ref_dir)
    config.train.report_to = ["tensorboard"]
    (out / "rep.yaml").write_text(dump_config(config))
    result = CliRunner().invoke(main, ["--quiet", "run", "--config", str(out / "rep.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "report: " in result.output
    root = out / "rep"
    bench = write_benchmark(out / "bench", langs=("es",), n=3)
    result = CliRunner().invoke(main, [
        "eval", "--run-dir", str(root), "--languages", "es", "--prompts", str(bench), "--judge", "hf",
        "--judge-model", str(tiny_ref_dir), "--judge-cache", str(out / "cache"), "--no-lc", "--max-new-tokens", "3",
        "--device", "cpu", "--output", str(root / "eval")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def test_run_writes_its_report_at_the_end_and_tracks_each_iteration(finished_run):
    assert (finished_run / "report" / "report.md").exists()  # written by `icr run`, before the eval existed
    assert "X-AlpacaEval" not in (finished_run / "report" / "report.md").read_text()
    for t in (0, 1):
        assert list((finished_run / "tracking" / f"iter_{t}").glob("events.out.tfevents.*"))


def test_report_numbers_come_from_the_run_files(finished_run):
    result = CliRunner().invoke(main, ["report", str(finished_run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    md = (finished_run / "report" / "report.md").read_text()
    for t in (0, 1):
        stats = read_json(finished_run / f"iter_{t}" / "pairs_stats.json")
        for lang, s in stats.items():
            drops = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "—"
            assert f"| {t} | {lang} | {s['prompts']} | {s['pairs']} | {drops} |" in md
            assert s["pairs"] + sum(s["dropped"].values()) == s["prompts"]  # every prompt accounted for
        metrics = read_json(finished_run / f"iter_{t}" / "model" / "train_metrics.json")
        assert f"| {t} | {metrics['pairs']} | {metrics['steps']} |" in md
        # the plan's step formula is transformers' own: it predicts the steps this run took
        assert training_steps(metrics["pairs"], _config_of(finished_run), processes=1) == metrics["steps"]
    for png in ("pairs.png", "iterations.png", "training.png", "leaderboard.png"):
        assert (finished_run / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "## X-AlpacaEval (paper's Table 2 layout)" in md and "| pi2 |" in md and "es LC | es WR" in md
    data = json.loads((finished_run / "report" / "report.json").read_text())
    assert [c["step"] for c in data["training"]["1"]["curve"]] == list(range(1, metrics["steps"] + 1))
    assert all(c["dpo_loss"] is not None and c["nll_loss"] is not None for c in data["training"]["1"]["curve"])


def _config_of(root):
    from icr.config import load_config

    return load_config(root / "config.yaml")


def test_figures_count_iterations_and_steps_in_whole_numbers(finished_run, monkeypatch):
    figures = []
    monkeypatch.setattr(icr.plots, "_save", lambda fig, path: figures.append(fig))
    data = collect(finished_run)
    icr.plots.plot_iterations(data["iterations"], finished_run / "x.png")
    icr.plots.plot_training({t: m["curve"] for t, m in data["training"].items()}, finished_run / "y.png")
    icr.plots.plot_training({0: data["training"][0]["curve"][:1]}, finished_run / "z.png")  # one step only
    icr.plots.plot_iterations([r for r in data["iterations"] if r["iteration"] == 0], finished_run / "w.png")
    for fig in figures:
        for ax in fig.axes:
            ticks = [x for x in ax.get_xticks() if ax.get_xlim()[0] <= x <= ax.get_xlim()[1]]
            assert ticks and all(float(x).is_integer() for x in ticks), ax.get_title()


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "not a run directory" in result.output
