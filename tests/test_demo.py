"""A newcomer's first hour (`scripts/first_hour.sh`, run once for this module): set-up, the quick
demo on the real SmolLM2 model, `icr status`, `icr report`, `icr eval` with a local judge, and three
typical mistakes refused before anything runs. The demo's report exists, and its numbers are finite
and agree with the files of the run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import X_ALPACAEVAL, needs_shared
from icr.core.io import read_jsonl

pytestmark = [pytest.mark.slow, needs_shared]  # minutes on a 2-core CPU: `make test-fast` skips this file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """The script's work folder and {step: (exit code, first error line or '-')}."""
    work = tmp_path_factory.mktemp("first-hour")
    env = {**os.environ, "ICR": str(Path(sys.executable).parent / "icr"), "XALPACAEVAL": str(X_ALPACAEVAL)}
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "first_hour.sh"), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = done.stdout.splitlines()
    steps = {}
    for i, line in enumerate(lines):
        if match := re.fullmatch(r"STEP (\S+) rc=(\d+)", line):
            steps[match.group(1)] = (int(match.group(2)), lines[i + 1] if i + 1 < len(lines) else "")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return work, steps


def test_the_first_hour_runs_and_each_mistake_is_one_clear_refusal(first_hour):
    work, steps = first_hour
    assert list(steps) == [
        "setup", "demo", "status", "report", "eval", "missing-prompts", "yaml-typo", "no-judge-key"
    ]  # fmt: skip
    for name in ("setup", "demo", "status", "report", "eval"):
        assert steps[name] == (0, "-"), (name, steps[name])
    for name in ("missing-prompts", "yaml-typo", "no-judge-key"):
        assert steps[name][0] == 2, (name, steps[name])
    assert "data.prompts" in steps["missing-prompts"][1] and "no-such-prompts" in steps["missing-prompts"][1]
    assert steps["yaml-typo"][1] == "Error: invalid config:"
    typo = (work / "yaml-typo.log").read_text()
    assert "typo.yaml:3: generate.temprature: unknown key (did you mean 'temperature'?)" in typo
    judge = (work / "no-judge-key.log").read_text()
    assert "OPENAI_API_KEY" in judge and "--judge hf" in judge
    # refused before anything ran: no run directory, no generated output
    assert not (work / "runs").exists() and not (work / "eval-gpt4").exists()
    status = (work / "status.log").read_text()
    assert re.search(r"iter 1\s+train\s+done", status) and "8/8 stages done" in status
    assert (work / "demo" / "runs" / "icr-demo" / "report" / "report.md").exists()
    assert (work / "eval" / "results.json").exists() and (work / "eval" / "leaderboard.md").exists()


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


def test_quick_demo_writes_a_consistent_report(first_hour):
    tmp_path = first_hour[0] / "demo"
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
