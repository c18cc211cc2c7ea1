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
import torch
import yaml
from safetensors.torch import load_file

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


REFERENCE_PROBE = """
import logging, sys
from pathlib import Path

sys.path.insert(0, sys.argv[3])
from helpers import TOKEN_BUDGET, train_config
from icr.core.logs import configure_logging
from icr.core.models import load_model
from icr.core.io import read_jsonl
from icr.training.reference_logps import cached_reference_logps

configure_logging(logging.INFO, rich=False)
pairs_file, cache_dir = Path(sys.argv[1]), Path(sys.argv[2])
reference = load_model(sys.argv[4], device="cpu", dtype="float32")
cached_reference_logps(reference, pairs_file, read_jsonl(pairs_file), train_config(), cache_dir, TOKEN_BUDGET)
"""


ZERO3_PROBE = """
import json, sys
from pathlib import Path

sys.path.insert(0, sys.argv[3])
from helpers import train_config
from transformers import TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled

import icr.training.sharding as sharding
from icr.core.distributed import current_shard
from icr.training.registry import TrainingJob
from icr.training.trainer import train_dpo


def local_and_whole(model):  # the weights this process holds, and the model's
    params = list(model.parameters())
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    return [local, sum(getattr(p, "ds_numel", p.numel()) for p in params), sum(p.numel() for p in params)]


class LocalShare(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append(local_and_whole(model))


if __name__ == "__main__":
    real_load, at_load = sharding.load_model, {}

    def load_and_record(*args, **kwargs):  # the real load, noting the plan's state around it
        at_load["zero3"] = is_deepspeed_zero3_enabled()
        lm = real_load(*args, **kwargs)
        at_load["held"] = local_and_whole(lm.model)
        return lm

    sharding.load_model = load_and_record
    pairs_file, share = Path(sys.argv[2]), LocalShare()
    config = train_config(batch_size=2, global_batch_size=4)  # the same global batch on 1 and 2 processes
    job = TrainingJob(sys.argv[1], pairs_file, pairs_file.parent / "model", config, device="cpu", callbacks=(share,))
    metrics = train_dpo(job)
    found = {**at_load, "steps": share.steps, "trained": metrics["steps"]}
    (pairs_file.parent / f"probe-{current_shard().rank}.json").write_text(json.dumps(found))
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


def test_reference_log_probs_are_scored_once_across_processes_into_the_same_cache(tiny_ref_dir, tmp_path):
    from helpers import TRAIN_PAIRS, write_train_pairs
    from icr.core.io import write_jsonl_atomic
    from icr.training.reference_logps import REFERENCE_PAIRS_PER_PASS

    pairs_file = write_train_pairs(tmp_path / "p.jsonl")
    rows = read_jsonl(pairs_file)
    many = [{**row, "id": f"{k}-{row['id']}"} for k in range(5) for row in rows]  # 20 pairs: 3 chunks of 8
    write_jsonl_atomic(pairs_file, many)
    assert len(many) == 5 * len(TRAIN_PAIRS) and -(-len(many) // REFERENCE_PAIRS_PER_PASS) == 3
    probe = tmp_path / "reference.py"
    probe.write_text(REFERENCE_PROBE)
    args = [str(pairs_file), "", str(REPO / "tests"), str(tiny_ref_dir)]
    caches = {}
    for processes in (1, 2):
        args[1] = str(tmp_path / f"cache{processes}")
        launch = [sys.executable, str(probe), *args]
        if processes == 2:
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
            launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            launch += ["--main_process_port", str(_free_port()), str(probe), *args]
        done = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (cache,) = Path(args[1]).glob("ref_logps-*.json")
        caches[processes] = cache.read_bytes()
        if processes == 2:  # chunks 0 and 2 (8 + 4 pairs) to process 0, chunk 1 (8 pairs) to process 1
            log = done.stdout + done.stderr
            assert "process 0 of 2 scored 12 of 20 pairs" in log and "process 1 of 2 scored 8 of 20 pairs" in log
    assert caches[1] == caches[2]


def test_zero3_shards_the_policy_as_it_loads_and_saves_the_one_process_model(tiny_dir, tmp_path):
    """A whole DPO training under ZeRO-3 on 2 CPU processes (gloo; DeepSpeed's zero.Init runs there).
    The training arguments exist before from_pretrained, so each process holds half the weights from
    the load on and at every step, and the gathered model equals the unsharded single-process one.
    Tolerance 1e-4
    (2% of this learning rate's first Adam step): Adam divides each gradient by its own magnitude,
    so the last bits of near-zero gradient entries, which depend on the processes' summation
    order, move their weights by up to a step's size; measured: 2.8e-5."""
    pytest.importorskip("deepspeed", reason="make setup installs deepspeed")
    from helpers import write_train_pairs

    probe = tmp_path / "zero3.py"
    probe.write_text(ZERO3_PROBE)
    outputs = {}
    for processes in (1, 2):
        pairs_file = write_train_pairs(tmp_path / f"p{processes}" / "pairs.jsonl")
        launch = [sys.executable]
        if processes == 2:
            launch += ["-m", "accelerate.commands.launch", "--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag"]
            launch += ["true", "--zero3_save_16bit_model", "true", "--num_processes", "2", "--num_machines", "1"]
            launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
        launch += [str(probe), str(tiny_dir), str(pairs_file), str(REPO / "tests")]
        done = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs[processes] = {r: read_json(pairs_file.parent / f"probe-{r}.json") for r in range(processes)}
    whole = sum(t.numel() for t in load_file(tiny_dir / "model.safetensors").values())
    alone = outputs[1][0]
    assert not alone["zero3"] and alone["held"] == alone["steps"][0] == [whole, whole, whole]
    for rank in (0, 1):
        sharded = outputs[2][rank]
        assert sharded["zero3"] and sharded["trained"] == 1
        assert sharded["held"][2] == 0  # every tensor a partitioned placeholder once loaded
        for local, total, _ in [sharded["held"], *sharded["steps"]]:
            assert total == whole and whole / 2 <= local <= whole / 2 + 2 * 64  # half, up to DeepSpeed's padding
    one = load_file(tmp_path / "p1" / "model" / "model.safetensors")
    two = load_file(tmp_path / "p2" / "model" / "model.safetensors")
    start = load_file(tiny_dir / "model.safetensors")
    assert sorted(one) == sorted(two) and all(two[k].dtype == torch.float32 for k in two)
    assert max(float((one[k] - start[k]).abs().max()) for k in one) > 1e-3  # training moved the weights
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-4


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


@pytest.mark.parametrize(
    "name, kind", [("multi_node_ddp", "MULTI_GPU"), ("multi_node_zero3", "DEEPSPEED"), ("multi_node_fsdp", "FSDP")]
)
def test_the_multi_node_accelerate_configs_load_as_two_nodes_of_eight(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == kind and not config.use_cpu
    assert (config.num_machines, config.num_processes, config.machine_rank) == (2, 16, 0)
    assert config.main_process_port == 29500 and config.rdzv_backend == "static"
    text = (REPO / "configs" / "accelerate" / f"{name}.yaml").read_text()
    assert "--machine_rank $SLURM_NODEID --main_process_ip $HEAD_NODE" in text  # how a launch overrides them
