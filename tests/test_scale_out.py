"""Beyond one process, with real launches on CPU (gloo): each process's generation engine gets its
own GPUs, and the SLURM example runs a whole `icr run` as plain bash.

The single-process parts live beside their modules: the GPU assignment (`tests/runtime/
test_placement.py`), the vLLM engine's layout and arguments (`tests/engines/
test_sampling_backends.py`), resumable training (`tests/training/test_checkpoints.py`) and
`train.trl_args` (`tests/config/test_train.py`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icr.core.io import read_json, read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[1]

ENGINE_PROBE = """
import json, sys
from icr.config import ModelsConfig, SamplingConfig
from icr.core.distributed import current_shard
from icr.runtime.child_process import open_generator

if __name__ == "__main__":  # the spawned child imports this file again
    model = sys.argv[1]
    shard = current_shard()
    config = SamplingConfig(backend="hf", tensor_parallel_size=2, pipeline_parallel_size=2, max_new_tokens=4)
    models = ModelsConfig(policy=model, reference=model, device="cpu", dtype="float32")
    with open_generator(model, config, models, models.load, isolated=True) as generator:
        seen = generator.environment("CUDA_VISIBLE_DEVICES")["CUDA_VISIBLE_DEVICES"]
        samples = generator.sample_batch(["Say hello."], 2, [shard.rank])
    print("PROBE " + json.dumps({"rank": shard.rank, "seen": seen, "samples": len(samples[0])}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def test_each_launched_process_engine_child_sees_only_its_own_gpus(tiny_dir, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(ENGINE_PROBE)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), str(probe), str(tiny_dir)]
    # 8 GPUs as a scheduler lists them; torch on this CPU machine sees none, the children get their share
    done = subprocess.run(
        launch, env=_env(CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probes = [json.loads(line[len("PROBE ") :]) for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    by_rank = {p["rank"]: p for p in probes}
    assert {r: p["seen"] for r, p in by_rank.items()} == {0: "0,1,2,3", 1: "4,5,6,7"}  # TP 2 × PP 2 each
    assert all(p["samples"] == 2 for p in probes)  # the HF engine ran in the child


def _run_config(root: Path, tiny_dir: Path, tiny_ref_dir: Path) -> Path:
    config = {
        "name": "slurm",
        "output_dir": str(root / "runs"),
        "iterations": 1,
        "models": {"policy": str(tiny_dir), "reference": str(tiny_ref_dir), "device": "cpu", "dtype": "float32"},
        "data": {"prompts": "embedded:demo", "languages": ["en", "es"], "limit": 2},
        "generate": {"n": 3, "max_new_tokens": 6, "batch_prompts": 1},
        "reward": {"batch_prompts": 1},
        "pairs": {"language_filter": "off", "drop_identical": False},
        "train": {"batch_size": 2, "grad_accum": 1, "epochs": 1, "nll_weight": 0.0, "max_length": 64},
    }
    path = root / "slurm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_slurm_script_runs_as_plain_bash_on_one_node_with_two_processes(tiny_dir, tiny_ref_dir, tmp_path):
    config = _run_config(tmp_path, tiny_dir, tiny_ref_dir)
    slurm = {"SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost", "GPUS_PER_NODE": "2"}
    env = _env(**slurm, MAIN_PORT=str(_free_port()), PYTHON=sys.executable, ACCELERATE_ARGS="--mixed_precision no")
    env.pop("SLURM_JOB_ID", None)
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "slurm" / "icr-run.sbatch"), str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "runs" / "slurm"
    manifest = read_json(run / "manifest.json")
    assert set(manifest["stages"]) == {f"iter_0/{s}" for s in ("generate", "reward", "pairs", "train")}
    for lang in ("en", "es"):
        generations = read_jsonl(run / "iter_0" / "generations" / f"{lang}.jsonl")
        assert [len(g["responses"]) for g in generations] == [3, 3]
    metrics = read_json(run / "iter_0" / "model" / "train_metrics.json")
    assert metrics["processes"] == 2 and metrics["global_batch"] == 4  # 2 processes × batch 2
