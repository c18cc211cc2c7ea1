"""Crash safety: `icr run` killed with SIGKILL at random moments and restarted ends with exactly the
files of an uninterrupted run.

The harness runs `python -m icr.cli run --config cfg.yaml` (tiny random models, 2 languages, a few
prompts, several generation chunks, 1 iteration with training) once uninterrupted, timing the work
of each stage from its log ("iteration 0: <stage>", then the sign that its models are loaded: the
progress bar of generate and reward, the weight loading of train). Then, in a second run folder, it starts the same
command
again and again and kills it with SIGKILL, at least `MIN_KILLS` times. Each kill is aimed at the
first unfinished stage still under its quota (`QUOTA`): the harness waits until the process has
begun that stage's work, sleeps a random time (seeded `random.Random`) within the stage's measured
duration and kills; so kills land in generate, reward, pairs and train, during appends, renames,
manifest updates and model saving. The stage recorded for a kill is the one the manifest shows in
progress afterwards. After every kill the harness checks what a reader could see: every complete
line of every JSON Lines file parses, no record twice, a stage the manifest calls finished has all
its outputs, a model folder is whole whenever it exists. Finally the run is let finish: its files
must equal the uninterrupted run's byte for byte, its model weights tensor for tensor, with no
temporary file left. If a run finishes before enough kills, a fresh run folder takes over.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import LANGS
from icr.core.errors import DataError
from icr.core.io import read_jsonl
from process_harness import (
    STAGES,
    TIME_LIMIT_S,
    at_work,
    check_consistent,
    current_stage,
    keys,
    launch,
    output_bytes,
    run_timed,
    stage_files,
    write_config,
)

pytestmark = pytest.mark.slow  # minutes on a 2-core CPU: `make test-fast` skips this file

MIN_KILLS = 20
QUOTA = {"generate": 8, "reward": 8, "pairs": 1, "train": 3}  # kills aimed at each stage


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_files(tiny_dir, tiny_ref_dir, tmp_path):
    deadline = time.monotonic() + TIME_LIMIT_S
    ref_cfg = write_config(tmp_path / "ref.yaml", tiny_dir, tiny_ref_dir, "ref")
    took = run_timed(ref_cfg, tmp_path / "ref.yaml", tmp_path / "ref.log", deadline)
    ref = tmp_path / "ref"
    want = output_bytes(ref)
    prompt_keys = [k for lang in LANGS for k in keys(read_jsonl(ref / "iter_0" / "generations" / f"{lang}.jsonl"))]
    # A kill aimed at a stage lands within `window` after its work begins. A resumed generate or
    # reward keeps what earlier attempts wrote, so a short window spreads its kills over it; pairs
    # and train start over, so their kills may land anywhere in them.
    window = {s: took[s] * (2 / QUOTA[s] if s in ("generate", "reward") else 1) for s in STAGES}
    print("stage durations (s):", {s: round(t, 2) for s, t in took.items()})

    rng = random.Random(20240611)
    hits: list[str] = []  # the stage in progress at each kill
    episode, attempt, runs = 0, 0, []
    while len(hits) < MIN_KILLS:
        assert time.monotonic() < deadline, f"harness took too long; kills so far: {hits}"
        cfg = write_config(tmp_path / f"crash{episode}.yaml", tiny_dir, tiny_ref_dir, f"crash{episode}")
        stage = current_stage(cfg.run_dir)
        if stage == "finished":  # it completed between kills: checked below; go on in a fresh run folder
            runs.append(cfg)
            episode += 1
            continue
        target = next((s for s in STAGES[STAGES.index(stage) :] if hits.count(s) < QUOTA[s]), stage)
        attempt += 1
        log_path = tmp_path / f"crash{episode}-{attempt}.log"
        with open(log_path, "wb") as log:
            proc = launch(tmp_path / f"crash{episode}.yaml", log)
            while proc.poll() is None and not at_work(log_path, target):
                time.sleep(0.02)
            try:
                proc.wait(timeout=rng.uniform(0, window[target]))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.returncode == -signal.SIGKILL:
            hits.append(current_stage(cfg.run_dir))
        else:
            assert proc.returncode == 0, log_path.read_text(errors="replace")[-3000:]
        check_consistent(cfg.run_dir, cfg, prompt_keys)
    runs.append(cfg)

    for cfg in runs:  # each run, finished after its last kill, holds exactly the uninterrupted run's files
        root = cfg.run_dir
        (root / ".manifest.json.x1y2.tmp").write_text("{")  # as a kill between mkstemp and rename leaves
        with open(tmp_path / f"{cfg.name}-final.log", "wb") as log:
            assert launch(tmp_path / f"{cfg.name}.yaml", log).wait(timeout=TIME_LIMIT_S) == 0
        check_consistent(root, cfg, prompt_keys)
        assert output_bytes(root) == want
        for s in ("generate", "reward", "pairs"):  # strict reads: every line whole; no record twice or lost
            got = [k for p in stage_files(root)[s] if p.suffix == ".jsonl" for k in keys(read_jsonl(p))]
            assert len(set(got)) == len(got)
            if s != "pairs":
                assert sorted(got) == sorted(prompt_keys)
        trained, expected = (load_file(r / "iter_0" / "model" / "model.safetensors") for r in (root, ref))
        assert trained.keys() == expected.keys()
        assert all(torch.equal(trained[k], expected[k]) for k in expected), "trained weights differ"
        leftovers = [str(p) for p in root.rglob(".*")]
        assert not leftovers, f"temporary files left behind: {leftovers}"
    print(f"{len(hits)} kills in {len(runs)} run folder(s):", {s: hits.count(s) for s in sorted(set(hits))})
    assert len(set(hits) - {"finished"}) >= 3, f"kills hit too few stages: {hits}"


def test_truncated_last_line_is_repaired_with_a_warning(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "1"}\n{"id": "2", "resp', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="icr.core.io"):
        assert read_jsonl(path, repair=True) == [{"id": "1"}]
    assert any(
        r.levelno == logging.WARNING and f"{path}:2" in r.getMessage() and "truncated" in r.getMessage()
        for r in caplog.records
    )
    assert path.read_text(encoding="utf-8") == '{"id": "1"}\n'
    caplog.clear()
    path.write_text('{"id": "1"}\n{"id": "2", "resp\n{"id": "3"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path.name}:2: corrupt JSON line"):
        read_jsonl(path, repair=True)
    assert not caplog.records  # a corrupt middle line is an error, never repaired away
