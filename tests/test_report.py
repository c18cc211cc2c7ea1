"""The demo report: every number of report.md comes from the run's files and report.json."""

from __future__ import annotations

import json

from helpers import run_config
from icr.data import read_json, write_json_atomic
from icr.pipeline import write_summary
from icr.report import write_report
from icr.rundir import RunDir

TERMS = {"dpo_loss": 0.6931, "nll_loss": 2.5, "reward_margin": 0.0, "reward_accuracy": 0.0}
AFTER = {"dpo_loss": 0.5123, "nll_loss": 2.25, "reward_margin": 0.3, "reward_accuracy": 0.75}


def _row(accuracy: float, n: int = 4) -> dict:
    return {"accuracy": accuracy, "n": n, "ci_low": accuracy / 2, "ci_high": (1 + accuracy) / 2, "mean_margin": 0.1}


def test_report_tables_plots_and_json_come_from_the_run(tmp_path):
    run = RunDir(run_config(tmp_path / "runs", "p", "r"))
    stats = {lang: {"prompts": 3, "pairs": 2, "mean_len_chosen": 10.0, "mean_len_rejected": 12.0,
                    "mean_margin": 0.25, "alpha": 0.0125, "target_language_share": 0.5} for lang in ("en", "es")}
    write_json_atomic(run.pairs_stats_file(0), stats)
    write_summary(run)
    write_json_atomic(run.model_dir(0) / "train_metrics.json", {"pairs": 4, "steps": 2, "before": TERMS,
                                                                 "after": AFTER})
    write_json_atomic(tmp_path / "models" / "pi_dpo" / "train_metrics.json",
                      {"pairs": 8, "steps": 4, "before": TERMS, "after": AFTER})
    accuracy = {"english": {"implicit_reward": _row(0.75), "likelihood_pi_ref": 0.5, "likelihood_pi_dpo": 0.625},
                "multilingual": {"crosslingual": {"es": _row(0.8, 5)}, "multilingual": {"es": _row(0.6, 5)}}}
    path = write_report(tmp_path, run, accuracy, {"icr_iterations_s": 12.4}, quick=True)

    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ICR demo report (quick)")
    assert "8 English pairs, 4 optimizer steps" in text and "from 0.6931 to 0.5123" in text
    assert "| implicit reward β·log π_dpo/π_ref | 75.0% [37.5%, 87.5%] |" in text
    assert "| es | 5 | 80.0% [40.0%, 90.0%] | 60.0% [30.0%, 80.0%] |" in text
    assert "| 0 | es | 3 | 2 | 10.0 | 12.0 | 0.250 | 0.0125 | 50.0% |" in text  # the run's summary table
    assert "| 0 | 4 | 2 | 0.6931 → 0.5123 | 2.500 → 2.250 | 75.0% |" in text
    assert "Timings: icr_iterations_s 12 s" in text
    data = read_json(tmp_path / "report.json")
    assert data["accuracy"] == json.loads(json.dumps(accuracy)) and data["training"]["0"]["steps"] == 2
    assert [r["lang"] for r in data["iterations"]] == ["en", "es"]
    for png in ("reward_accuracy.png", "iterations.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
