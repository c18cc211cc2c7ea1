"""`icr status`: done / running (records written / expected, rate, ETA) / interrupted / not
started, read from the run folder alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from helpers import run_config
from icr.cli import main
from icr.core.io import read_jsonl
from icr.observe.status import run_status
from icr.pipeline import run_stage
from icr.runtime.status import stage_started, status_file
from icr.stages import STAGES


@pytest.fixture(scope="module")
def generated(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """A run whose iteration 0 has finished generating (3 prompts × 2 languages)."""
    config = run_config(tmp_path_factory.mktemp("runs"), tiny_dir, tiny_ref_dir, "st", iterations=2)
    return run_stage(config, "generate")


def _by_stage(rows):
    return {(r.iteration, r.stage): r for r in rows}


def test_finished_running_and_not_started_stages(generated, monkeypatch):
    root = generated.root
    started = json.loads(status_file(root, 0, "generate").read_text())
    assert started["expected"] == 6 and started["unit"] == "prompt"  # written by the pipeline when it started
    # the reward stage "runs" in this process: 2 of 6 records written, 1 already there when it started
    rewards = root / "iter_0" / "rewards"
    rewards.mkdir(parents=True, exist_ok=True)
    gens = read_jsonl(root / "iter_0" / "generations" / "en.jsonl")
    (rewards / "en.jsonl").write_text(json.dumps(gens[0]) + "\n")
    stage_started(root, 0, "reward", 2, 6, "prompt", [rewards / "en.jsonl", rewards / "es.jsonl"])
    info = json.loads(status_file(root, 0, "reward").read_text())
    info["started"] -= 100.0  # 100 s ago
    status_file(root, 0, "reward").write_text(json.dumps(info))
    (rewards / ".es.jsonl.part1-of-2").write_text(json.dumps(gens[1]) + "\n")  # another process's part file
    rows = _by_stage(run_status(root, STAGES, now=info["started"] + 100.0))
    assert rows[(0, "generate")].state == "done"
    reward = rows[(0, "reward")]
    assert (reward.state, reward.done, reward.expected) == ("running", 2, 6)
    assert reward.rate_per_s == pytest.approx(0.01) and reward.eta_s == pytest.approx(400.0)
    assert rows[(0, "pairs")].state == "not started" and rows[(1, "train")].state == "not started"
    assert len(rows) == 8  # T = 2 from the run's config.yaml


def test_a_stage_whose_process_is_gone_is_interrupted(generated):
    root = generated.root
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage_started(root, 0, "pairs", 2, None, "")
    pairs = json.loads(status_file(root, 0, "pairs").read_text())
    pairs["pid"] = dead.pid
    status_file(root, 0, "pairs").write_text(json.dumps(pairs))
    assert _by_stage(run_status(root, STAGES))[(0, "pairs")].state == "interrupted"


def test_status_command_prints_and_writes_json(generated):
    result = CliRunner().invoke(main, ["status", str(generated.root)], catch_exceptions=False)
    assert result.exit_code == 0
    assert "iter 0  generate  done" in result.output and "iter 1  train     not started" in result.output
    rows = json.loads(CliRunner().invoke(main, ["status", "--json", str(generated.root)]).output)
    assert {(r["iteration"], r["stage"]) for r in rows} == {
        (t, s) for t in (0, 1) for s in ("generate", "reward", "pairs", "train")
    }


def test_status_of_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code != 0 and "not a run directory" in result.output
