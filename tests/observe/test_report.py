"""`icr report` on a real (tiny) 2-iteration run started with `icr run`, with TensorBoard tracking
and an `icr eval` table: every number in report.md comes from the run's files, the figures exist
and count iterations in whole numbers. The demo's report: its sections come from the same code."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import icr.observe.plots
from helpers import offline_eval_flags, run_config, two_iteration_config, write_benchmark
from icr.cli import main
from icr.config import dump_config
from icr.core.io import read_json, write_json_atomic
from icr.demo.report import write_report
from icr.observe.plan import training_steps
from icr.observe.report import collect
from icr.pipeline import write_summary
from icr.runtime.rundir import RunDir


@pytest.fixture(scope="module")
def finished_run(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """`icr run` (which writes the report at the end), then `icr eval` of π0, π1, π2 into <run>/eval."""
    out = tmp_path_factory.mktemp("runs")
    config = two_iteration_config(out, "rep", tiny_dir, tiny_ref_dir)
    config.train.report_to = ["tensorboard"]
    (out / "rep.yaml").write_text(dump_config(config))
    result = CliRunner().invoke(main, ["--quiet", "run", "--config", str(out / "rep.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "report: " in result.output
    root = out / "rep"
    bench = write_benchmark(out / "bench", langs=("es",), n=3)
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--run-dir",
            str(root),
            *offline_eval_flags(bench, tiny_ref_dir, out / "cache"),
            "--output",
            str(root / "eval"),
        ],
        catch_exceptions=False,
    )
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
    monkeypatch.setattr(icr.observe.plots, "_save", lambda fig, path: figures.append(fig))
    data = collect(finished_run)
    icr.observe.plots.plot_iterations(data["iterations"], finished_run / "x.png")
    icr.observe.plots.plot_training({t: m["curve"] for t, m in data["training"].items()}, finished_run / "y.png")
    icr.observe.plots.plot_training({0: data["training"][0]["curve"][:1]}, finished_run / "z.png")  # one step only
    icr.observe.plots.plot_iterations([r for r in data["iterations"] if r["iteration"] == 0], finished_run / "w.png")
    for fig in figures:
        for ax in fig.axes:
            ticks = [x for x in ax.get_xticks() if ax.get_xlim()[0] <= x <= ax.get_xlim()[1]]
            assert ticks and all(float(x).is_integer() for x in ticks), ax.get_title()


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "not a run directory" in result.output


TERMS = {"dpo_loss": 0.6931, "nll_loss": 2.5, "reward_margin": 0.0, "reward_accuracy": 0.0}
AFTER = {"dpo_loss": 0.5123, "nll_loss": 2.25, "reward_margin": 0.3, "reward_accuracy": 0.75}


def _row(accuracy: float, n: int = 4) -> dict:
    return {"accuracy": accuracy, "n": n, "ci_low": accuracy / 2, "ci_high": (1 + accuracy) / 2, "mean_margin": 0.1}


def test_report_tables_plots_and_json_come_from_the_run(tmp_path):
    run = RunDir(run_config(tmp_path / "runs", "p", "r"))
    stats = {
        lang: {
            "prompts": 3,
            "pairs": 2,
            "mean_len_chosen": 10.0,
            "mean_len_rejected": 12.0,
            "mean_margin": 0.25,
            "alpha": 0.0125,
            "target_language_share": 0.5,
        }
        for lang in ("en", "es")
    }
    write_json_atomic(run.pairs_stats_file(0), stats)
    write_summary(run)
    write_json_atomic(
        run.model_dir(0) / "train_metrics.json", {"pairs": 4, "steps": 2, "before": TERMS, "after": AFTER}
    )
    write_json_atomic(
        tmp_path / "models" / "pi_dpo" / "train_metrics.json", {"pairs": 8, "steps": 4, "before": TERMS, "after": AFTER}
    )
    accuracy = {
        "english": {"implicit_reward": _row(0.75), "likelihood_pi_ref": 0.5, "likelihood_pi_dpo": 0.625},
        "multilingual": {"crosslingual": {"es": _row(0.8, 5)}, "multilingual": {"es": _row(0.6, 5)}},
    }
    path = write_report(tmp_path, run, accuracy, {"icr_iterations_s": 12.4}, quick=True)

    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ICR demo report (quick)")
    assert "8 English pairs, 4 optimizer steps" in text and "from 0.6931 to 0.5123" in text
    assert "| implicit reward β·log π_dpo/π_ref | 75.0% [37.5%, 87.5%] |" in text
    assert "| es | 5 | 80.0% [40.0%, 90.0%] | 60.0% [30.0%, 80.0%] |" in text
    assert "| 0 | es | 3 | 2 | — | 10.0 | 12.0 | 0.250 | 0.0125 | 50.0% |" in text  # `icr report`'s pairs table
    assert "| 0 | 4 | 2 | 0.6931 → 0.5123 | 2.500 → 2.250 | 0.300 | 75.0% | n/a |" in text  # and its training
    assert "Timings: icr_iterations_s 12 s" in text
    data = read_json(tmp_path / "report.json")
    assert data["accuracy"] == json.loads(json.dumps(accuracy)) and data["training"]["0"]["steps"] == 2
    assert [r["lang"] for r in data["iterations"]] == ["en", "es"]
    for png in ("reward_accuracy.png", "iterations.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
