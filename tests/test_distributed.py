"""Sharded stages: P processes (accelerate launch, gloo on CPU) write the same files as one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from icr.config import GenerateConfig
from icr.core.distributed import Shard
from icr.core.io import read_jsonl, write_jsonl_atomic
from icr.core.prompts import Prompt
from icr.engines.sampling.hf import HFGenerator
from icr.runtime.jobs import leftover_parts, merge_parts, part_path
from icr.stages.generate import generate_language

pytestmark = pytest.mark.slow  # minutes on a 2-core CPU: `make test-fast` skips this file

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LocalShard(Shard):
    """A shard whose barrier is a no-op, to play the processes one after another in this process."""

    def wait(self) -> None:
        pass


def test_shards_partition_the_work():
    owners = [[k for k in range(10) if Shard(r, 3).owns(k)] for r in range(3)]
    assert sorted(sum(owners, [])) == list(range(10))
    assert owners[1] == [1, 4, 7]


def test_part_files_are_hidden_beside_the_stage_file(tmp_path):
    path = tmp_path / "en.jsonl"
    assert part_path(path, Shard()) == path
    assert part_path(path, Shard(1, 2)) == tmp_path / ".en.jsonl.part1-of-2"
    assert not list(tmp_path.glob("*.jsonl.*"))  # nothing a `*.jsonl` glob would pick up


def test_sequential_shards_write_the_single_process_file(tiny_lm, tmp_path):
    prompts = [Prompt(f"s{k}", "en", f"Question number {k}?") for k in range(5)]
    cfg = GenerateConfig(n=2, max_new_tokens=5, batch_prompts=2)
    gen = HFGenerator(tiny_lm, cfg)
    single = generate_language(
        gen, prompts, tmp_path / "one" / "en.jsonl", cfg, seed=0, iteration=0, max_prompt_tokens=1024
    )
    out = tmp_path / "two" / "en.jsonl"
    # process 1 finishes first: it must not merge, and leaves only its part (chunk 1: s2, s3)
    generate_language(gen, prompts, out, cfg, seed=0, iteration=0, max_prompt_tokens=1024, shard=LocalShard(1, 2))
    assert [r["id"] for r in read_jsonl(part_path(out, Shard(1, 2)))] == ["s2", "s3"]
    merged = generate_language(
        gen, prompts, out, cfg, seed=0, iteration=0, max_prompt_tokens=1024, shard=LocalShard(0, 2)
    )
    assert merged == single
    assert out.read_bytes() == (tmp_path / "one" / "en.jsonl").read_bytes()
    assert not leftover_parts(out)


def test_merge_folds_parts_of_an_interrupted_launch(tmp_path):
    path = tmp_path / "es.jsonl"
    write_jsonl_atomic(path, [{"id": "b", "v": 1}])
    (tmp_path / ".es.jsonl.part0-of-3").write_text('{"id": "a", "v": 0}\n{"id": "b", "v": 1}\n')
    (tmp_path / ".es.jsonl.part2-of-3").write_text('{"id": "c", "v": 2}\n{"id": "d", "v"')  # killed mid-line
    merged = merge_parts(path, ["a", "b", "c", "d"])
    assert [r["id"] for r in merged] == ["a", "b", "c"]  # the torn record is redone later, not invented
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    assert not leftover_parts(path)


def test_merge_keeps_records_outside_the_order_at_the_end(tmp_path):
    path = tmp_path / "generations.jsonl"
    write_jsonl_atomic(path, [{"id": "9", "v": 9}, {"id": "2", "v": 2}, {"id": "1", "v": 1}])
    assert [r["id"] for r in merge_parts(path, ["1", "2"])] == ["1", "2", "9"]


# ---------------------------------------------------------------- real processes (accelerate launch)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(processes: int, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        cmd = [sys.executable, "-m", "icr.cli", *args]
    else:
        # `--multi_gpu` selects accelerate's torchrun launcher, which also starts CPU processes (gloo);
        # `--cpu` alone would start one process and leave multi-CPU to mpirun
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "icr.cli",
            *args,
        ]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """The same ICR iteration run by 1 process (global batch 4) and by 2 (2 pairs each)."""
    root = tmp_path_factory.mktemp("dist")
    out = {}
    for processes in (1, 2):
        cfg = {
            "name": f"p{processes}",
            "output_dir": str(root),
            "iterations": 1,
            "models": {"policy": str(tiny_dir), "reference": str(tiny_ref_dir), "device": "cpu", "dtype": "float32"},
            "data": {"prompts": "embedded:demo", "languages": ["en", "es"], "limit": 2},
            "generate": {"n": 3, "max_new_tokens": 6, "batch_prompts": 1},
            "reward": {"batch_prompts": 1},  # each process scores one prompt per language
            "pairs": {"language_filter": "off", "drop_identical": False},  # exactly 4 pairs: one step
            # DPO only: TRL's NLL term is a per-process token mean, not a global one (see README)
            "train": {
                "batch_size": 4 // processes,
                "grad_accum": 1,
                "epochs": 2,
                "nll_weight": 0.0,
                "max_length": 64,
                "learning_rate": 1e-3,
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
            },
        }
        path = root / f"p{processes}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        _launch(processes, ["run", "--config", str(path)], cwd=root)
        out[processes] = root / f"p{processes}"
    return out


def _stage_files(run: Path) -> dict[str, bytes]:
    it = run / "iter_0"
    files = sorted((it / "generations").glob("*")) + sorted((it / "rewards").glob("*"))
    files += [it / "pairs.jsonl", it / "pairs_stats.json"]
    return {str(f.relative_to(run)): f.read_bytes() for f in files}


@pytest.mark.distributed
def test_two_processes_write_byte_identical_stage_files(runs):
    one, two = _stage_files(runs[1]), _stage_files(runs[2])
    assert sorted(one) == sorted(two)  # same files, and no part file left behind
    assert len(one) == 6
    for name in one:
        assert one[name] == two[name], name
    assert len(read_jsonl(runs[2] / "iter_0" / "pairs.jsonl")) == 4
    assert json.loads((runs[2] / "iter_0" / "model" / "train_metrics.json").read_text())["processes"] == 2


@pytest.mark.distributed
def test_two_process_training_steps_match_the_single_process(runs):
    logs = {p: json.loads((runs[p] / "iter_0" / "model" / "train_metrics.json").read_text()) for p in (1, 2)}
    losses = {p: [h["loss"] for h in logs[p]["log_history"] if "loss" in h] for p in (1, 2)}
    assert logs[1]["steps"] == logs[2]["steps"] == 2  # 2 epochs of one step over the same 4 pairs
    # step 1 is log 2 for any run (policy = reference); step 2 shows that step 1's update was the same
    assert losses[2] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
    assert losses[1][1] < losses[1][0] - 1e-3
    from safetensors.torch import load_file

    weights = {p: load_file(runs[p] / "iter_0" / "model" / "model.safetensors") for p in (1, 2)}
    assert weights[1].keys() == weights[2].keys()
    assert max(float((weights[1][k] - weights[2][k]).abs().max()) for k in weights[1]) < 1e-5


@pytest.mark.distributed
def test_manifest_written_once_by_the_main_process(runs):
    manifest = json.loads((runs[2] / "manifest.json").read_text())
    assert set(manifest["stages"]) == {f"iter_0/{s}" for s in ("generate", "reward", "pairs", "train")}
    assert not list(runs[2].rglob(".*part*"))
    assert not [p for p in runs[2].iterdir() if p.name.startswith(".")]  # no temporary model folder left


@pytest.mark.parametrize("name, kind", [("multi_gpu", "MULTI_GPU"), ("deepspeed_zero3", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == kind
    assert config.num_processes == 8 and not config.use_cpu
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
    if kind == "FSDP":  # a full state dict, so the saved model is a normal model folder
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.distributed
def test_eval_outputs_from_two_processes_match_one(tiny_dir, tmp_path):
    from helpers import offline_eval_flags, write_benchmark

    bench = write_benchmark(tmp_path / "bench", langs=("es",), n=5)
    files = {}
    for processes in (1, 2):
        out = tmp_path / f"eval{processes}"
        _launch(
            processes,
            [
                "eval",
                "--model",
                f"tiny={tiny_dir}",
                *offline_eval_flags(bench, tiny_dir, tmp_path / "cache", max_new_tokens=4),
                "--batch-size",
                "2",
                "--output",
                str(out),
            ],
            cwd=tmp_path,
        )
        folder = out / "outputs" / "tiny" / "es"
        files[processes] = {name: (folder / name).read_bytes() for name in ("generations.jsonl", "model_outputs.json")}
        files[processes]["leaderboard.csv"] = (out / "leaderboard.csv").read_bytes()
        assert not list(folder.glob(".*part*"))
    assert files[1] == files[2]
    assert len(read_jsonl(tmp_path / "eval2" / "outputs" / "tiny" / "es" / "generations.jsonl")) == 5
