"""`icr demo --quick` end to end on the real SmolLM2 model: the report exists, and its numbers are
finite and agree with the files of the run."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from icr.cli import main
from icr.core.io import read_jsonl

pytestmark = pytest.mark.slow  # minutes on a 2-core CPU: `make test-fast` skips this file


def _finite_numbers(obj):
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        assert math.isfinite(obj), obj
    elif isinstance(obj, dict):
        for v in obj.values():
            _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            _finite_numbers(v)


def test_quick_demo_writes_a_consistent_report(tmp_path, smollm_path):
    result = CliRunner().invoke(main, ["demo", "--quick", "--output", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "reward_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "iterations.png").stat().st_size > 1000
    _finite_numbers({k: v for k, v in report.items() if k not in ("iterations",)})

    run_dir = tmp_path / "runs" / "icr-demo"
    for row in report["iterations"]:
        pairs_file = run_dir / f"iter_{row['iteration']}" / "pairs.jsonl"
        pairs = [p for p in read_jsonl(pairs_file) if p["lang"] == row["lang"]]
        assert row["pairs"] == len(pairs)
        gens = read_jsonl(run_dir / f"iter_{row['iteration']}" / "generations" / f"{row['lang']}.jsonl")
        assert row["prompts"] == len(gens) == 2
        if pairs:
            mean_len = sum(len(p["chosen"][0]["content"]) for p in pairs) / len(pairs)
            assert row["mean_len_chosen"] == pytest.approx(mean_len)
        assert f"| {row['iteration']} | {row['lang']} | {row['prompts']} | {row['pairs']} |" in md
    assert {r["iteration"] for r in report["iterations"]} == {0, 1}

    acc = report["accuracy"]
    assert acc["english"]["implicit_reward"]["n"] == 4
    for mode in ("crosslingual", "multilingual"):
        assert {lang: v["n"] for lang, v in acc["multilingual"][mode].items()} == {"es": 3, "de": 3}
        for v in acc["multilingual"][mode].values():
            assert 0 <= v["ci_low"] <= v["accuracy"] <= v["ci_high"] <= 1
    assert report["stage0"]["pairs"] == 4
    assert report["stage0"]["after"]["dpo_loss"] < report["stage0"]["before"]["dpo_loss"]
    assert (run_dir / "iter_1" / "model" / "model.safetensors").exists()
    assert "What this scale can and cannot show" in md
    # the number of pairs that language_filter off (the paper, this run) and all (the old default) select differently
    stats = [json.loads((run_dir / f"iter_{t}" / "pairs_stats.json").read_text()) for t in (0, 1)]
    differing = sum(s["language_filter_effect"]["differing_pairs_off_vs_all"] for per in stats for s in per.values())
    assert report["language_filter"] == "off" and report["language_filter_effect"]["differing_pairs"] == differing
    assert f"{differing} of the prompts' pairs differ between `off`" in md
    for v in acc["multilingual"]["crosslingual"].values():  # the length split covers every pair
        assert v["chosen_longer"]["n"] + v["chosen_not_longer"]["n"] == v["n"] and "per_token" in v
