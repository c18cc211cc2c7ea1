"""Faults of real `icr run` processes (the harness of test_crash: tiny models, 2 languages, 4 prompts):
a second writer on the same run directory, SIGTERM at random moments, a lock left by SIGKILL.

Slow (each start of a process loads torch and the models): `pytest -m "not processes"` skips them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import process_harness
from icr.core.io import read_json, read_jsonl
from process_harness import (
    ENV,
    STAGES,
    TIME_LIMIT_S,
    at_work,
    check_consistent,
    current_stage,
    keys,
    launch,
    output_bytes,
    run_timed,
    write_config,
)

pytestmark = pytest.mark.processes

MIN_SIGNALS = 10
QUOTA = {"generate": 4, "reward": 4, "pairs": 1, "train": 2}  # SIGTERMs aimed at each stage
SIGKILL_AT = 3  # this attempt is killed with SIGKILL instead: the next one takes its lock over


@pytest.fixture(scope="module", autouse=True)
def unbuffered_logs():
    """The processes' stdout unbuffered, so that a stage's log line is in the log file when the stage
    starts, and a signal aimed at it lands in it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(process_harness.ENV, "PYTHONUNBUFFERED", "1")
        yield


@pytest.fixture(scope="module")
def reference(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """An uninterrupted run: its files, weights, prompt keys and the duration of each stage."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = write_config(tmp / "ref.yaml", tiny_dir, tiny_ref_dir, "ref")
    took = run_timed(cfg, tmp / "ref.yaml", tmp / "ref.log", time.monotonic() + TIME_LIMIT_S)
    root = cfg.run_dir
    prompt_keys = [k for lang in ("en", "es") for k in keys(read_jsonl(root / "iter_0/generations" / f"{lang}.jsonl"))]
    return {
        "files": output_bytes(root),
        "weights": load_file(root / "iter_0/model/model.safetensors"),
        "keys": prompt_keys,
        "took": took,
    }


def assert_like_reference(root, reference) -> None:
    assert output_bytes(root) == reference["files"]
    weights = load_file(root / "iter_0/model/model.safetensors")
    assert weights.keys() == reference["weights"].keys()
    assert all(torch.equal(weights[k], reference["weights"][k]) for k in weights), "trained weights differ"
    leftovers = [str(p) for p in root.rglob(".*")]
    assert not leftovers, f"lock or temporary files left behind: {leftovers}"


def test_second_writer_is_refused_and_the_first_finishes(reference, tiny_dir, tiny_ref_dir, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", tiny_dir, tiny_ref_dir, "shared")
    with open(tmp_path / "first.log", "wb") as log:
        first = launch(tmp_path / "run.yaml", log)
        while first.poll() is None and not at_work(tmp_path / "first.log", "generate"):
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "icr.cli", "run", "--config", str(tmp_path / "run.yaml")],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=TIME_LIMIT_S,
            check=False,
        )
        assert first.poll() is None, "the first run ended before the second one was refused"
        assert first.wait(timeout=TIME_LIMIT_S) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert second.returncode == 3, second.stderr[-3000:]
    message = " ".join(second.stderr.split())
    assert (
        f"{cfg.run_dir} is in use by another icr process: pid {first.pid} on host {socket.gethostname()}, "
        "started 20" in message
    )
    assert "icr.cli run --config" in message or "cli.py run --config" in message
    check_consistent(cfg.run_dir, cfg, reference["keys"])
    assert_like_reference(cfg.run_dir, reference)


def test_sigterm_at_random_moments_then_restart_gives_the_uninterrupted_files(
    reference, tiny_dir, tiny_ref_dir, tmp_path
):
    deadline = time.monotonic() + 2 * TIME_LIMIT_S
    took = reference["took"]
    rng = random.Random(1414)
    hits: list[str] = []  # the stage in progress after each SIGTERM
    runs, episode, attempt, killed = [], 0, 0, None
    while len(hits) < MIN_SIGNALS:
        assert time.monotonic() < deadline, f"harness took too long; signals so far: {hits}"
        cfg = write_config(tmp_path / f"term{episode}.yaml", tiny_dir, tiny_ref_dir, f"term{episode}")
        stage = current_stage(cfg.run_dir)
        if stage == "finished":
            runs.append(cfg)
            episode += 1
            continue
        target = next((s for s in STAGES[STAGES.index(stage) :] if hits.count(s) < QUOTA[s]), stage)
        attempt += 1
        log_path = tmp_path / f"term{episode}-{attempt}.log"
        sig = signal.SIGKILL if attempt == SIGKILL_AT else signal.SIGTERM
        with open(log_path, "wb") as log:
            proc = launch(tmp_path / f"term{episode}.yaml", log)
            while proc.poll() is None and not at_work(log_path, target):
                time.sleep(0.02)
            sent = False
            try:
                proc.wait(timeout=rng.uniform(0, took[target] * (2 / QUOTA[target])))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, sig)
                sent = True
                proc.wait(timeout=60)  # the grace a scheduler gives is longer: the stop must be quick
        text = log_path.read_text(errors="replace")
        if killed is not None:  # the attempt after the SIGKILL: its lock was left behind
            assert f"taking over the lock left by pid {killed}" in " ".join(text.split()), text[-3000:]
            killed = None
        if not sent:  # finished before the signal was due
            assert proc.returncode == 0, text[-3000:]
        elif sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
            killed = proc.pid
        elif proc.returncode == -signal.SIGTERM:  # after the command, during interpreter exit
            assert current_stage(cfg.run_dir) == "finished" and (cfg.run_dir / "summary.md").exists()
        else:  # no SIGTERM lost: it ends the process with the preemption code and message
            assert proc.returncode == 75, text[-3000:]
            assert "stopped by SIGTERM: every finished record is saved" in " ".join(text.split())
            assert "Exception ignored" not in text or "[exit code 75]" in text
            hits.append(current_stage(cfg.run_dir))
        check_consistent(cfg.run_dir, cfg, reference["keys"])
    runs.append(cfg)

    recorded = 0
    for cfg in runs:
        with open(tmp_path / f"{cfg.name}-final.log", "wb") as log:
            assert launch(tmp_path / f"{cfg.name}.yaml", log).wait(timeout=TIME_LIMIT_S) == 0
        check_consistent(cfg.run_dir, cfg, reference["keys"])
        assert_like_reference(cfg.run_dir, reference)
        failures = read_json(cfg.run_dir / "manifest.json").get("failures", [])
        recorded += sum(f["kind"] == "Preempted" for f in failures)
    print(f"{len(hits)} SIGTERMs in {len(runs)} run folder(s):", {s: hits.count(s) for s in sorted(set(hits))})
    # every SIGTERM that stopped a stage is in a manifest (one that came as the last stage was being
    # recorded, or later, while the summary was written, may leave the run "finished")
    assert sum(s != "finished" for s in hits) <= recorded <= len(hits), json.dumps(hits)
    assert len(set(hits) - {"finished"}) >= 3, f"signals hit too few stages: {hits}"
