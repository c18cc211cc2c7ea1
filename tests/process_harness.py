"""The harness of test_crash and test_faults_processes: real `icr run` processes on tiny models
(2 languages, 4 prompts, 1 iteration with training), their logs, and what a killed run may leave."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from helpers import LANGS, run_config
from icr.config import dump_config, load_config
from icr.core.io import read_json, read_jsonl
from icr.stages import STAGES as STAGE_TABLE

STAGES = list(STAGE_TABLE)
TIME_LIMIT_S = 420  # a bound, far above the usual ~3 minutes
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
}
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "train_metrics.json"}


def write_config(path: Path, tiny_dir, tiny_ref_dir, name: str):
    cfg = run_config(
        path.parent,
        tiny_dir,
        tiny_ref_dir,
        name,
        **{
            "data.limit": 4,
            "generate.n": 3,
            "generate.max_new_tokens": 8,
            "generate.batch_prompts": 2,
            "train.learning_rate": 5e-3,
            "train.lr_scheduler": "constant",
            "train.warmup_ratio": 0.0,
            "train.batch_size": 8,
            "train.grad_accum": 1,
            "train.max_length": 64,
        },
    )
    path.write_text(dump_config(cfg), encoding="utf-8")
    return cfg


def launch(config_path: Path, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "icr.cli", "run", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )


def current_stage(root: Path) -> str:
    """The stage in progress: the first one the manifest does not record as done."""
    path = root / "manifest.json"
    done = {k.split("/")[1] for k in read_json(path)["stages"]} if path.exists() else set()
    return next((s for s in STAGES if s not in done), "finished")


def stage_files(root: Path) -> dict[str, list[Path]]:
    it = root / "iter_0"
    return {
        "generate": [it / "generations" / f"{lang}.jsonl" for lang in LANGS],
        "reward": [it / "rewards" / f"{lang}.jsonl" for lang in LANGS],
        "pairs": [it / "pairs.jsonl", it / "pairs_stats.json"],
    }


def output_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for files in stage_files(root).values() for p in files}


def keys(records: list[dict]) -> list[tuple]:
    return [(r["lang"], r["id"]) for r in records]


def check_consistent(root: Path, cfg, prompt_keys: list[tuple]) -> None:
    """What a killed run leaves: only complete lines (but a last one cut short), no record twice, a
    finished stage complete, a model folder whole or absent."""
    for path in root.rglob("*.jsonl"):
        *complete, last = path.read_bytes().split(b"\n")
        records = [json.loads(line) for line in complete if line.strip()]
        assert len(set(keys(records))) == len(records), f"{path}: duplicate record"
        assert not last or path.parent.name in ("generations", "rewards"), f"{path}: cut line in a whole file"
    stage = current_stage(root)
    finished = STAGES[: STAGES.index(stage)] if stage != "finished" else STAGES
    for s in set(finished) - {"train"}:
        for path in stage_files(root)[s]:
            assert path.exists(), f"{s} marked done before {path} was written"
            if path.suffix == ".jsonl" and s != "pairs":
                assert keys(read_jsonl(path)) == [k for k in prompt_keys if k[0] == path.stem], path
    model = root / "iter_0" / "model"
    if "train" in finished:
        assert model.is_dir(), "train marked done before the model was in place"
    if model.exists():
        assert {p.name for p in model.iterdir()} >= MODEL_FILES, f"half-written model folder: {model}"
        load_file(model / "model.safetensors")
    if (root / "config.yaml").exists():
        assert load_config(root / "config.yaml") == cfg


# What the log shows once a stage's models are loaded and its work begins: the progress bars of
# generate and reward, the trainer's "training <model> on <n> pairs" once the policy is loaded.
WORK = {"generate": r"generate \w+:", "reward": r"reward \w+ \(", "pairs": "", "train": r"training \S+ on \d+ pairs"}


def at_work(log_path: Path, stage: str) -> bool:
    """Whether the process has begun the work of `stage` or gone past it."""
    text = log_path.read_text(errors="replace")
    announced = re.findall(r"iteration 0: (\w+)", text)
    if not announced:
        return False
    now, want = STAGES.index(announced[-1]), STAGES.index(stage)
    since = text.split(f"iteration 0: {stage}")[-1]
    return now > want or (now == want and re.search(WORK[stage], since) is not None)


def run_timed(cfg, config_path: Path, log_path: Path, deadline: float) -> dict[str, float]:
    """An uninterrupted run; returns how long the work of each stage took (train: until the manifest
    records it)."""
    begins = {}
    with open(log_path, "wb") as log:
        proc = launch(config_path, log)
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the uninterrupted run took too long"
            for s in STAGES:
                if s not in begins and at_work(log_path, s):
                    begins[s] = time.monotonic()
            if current_stage(cfg.run_dir) == "finished":
                begins.setdefault("finished", time.monotonic())
            time.sleep(0.05)
    assert proc.returncode == 0, log_path.read_text(errors="replace")[-3000:]
    ends = [begins[s] for s in STAGES[1:]] + [begins.get("finished", time.monotonic())]
    return {s: end - begins[s] for s, end in zip(STAGES, ends)}
