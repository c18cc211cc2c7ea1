"""`benchmarks/gpu.py`: the tiny dry run writes both files with the documented schema; other shapes
stop without CUDA; the projection follows its formula and never fills in unmeasured figures."""

from __future__ import annotations

import copy
import importlib
import json
import sys

import pytest
import torch

from helpers import REPO, SHARED_DATA

BENCH = REPO / "benchmarks"
TOP_KEYS = {
    "schema",
    "status",
    "reason",
    "commit",
    "created",
    "shape",
    "device",
    "versions",
    "tokenizer",
    "workload",
    "matmul_tflops",
    "scoring",
    "generation",
    "training",
    "speedup_vs_reference",
    "projection",
}
PART_FIELDS = {
    "status",
    "reason",
    "seconds",
    "tokens",
    "tokens_per_s",
    "flops",
    "share_of_matmul",
    "peak_memory_gib",
    "settings",
}


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu")
    finally:
        sys.path.remove(str(BENCH))


def _check_schema(doc: dict) -> None:
    assert set(doc) == TOP_KEYS and doc["schema"] == "icr-bench-gpu/1"
    for group, keys in {
        "scoring": {"ours", "reference", "ceiling"},
        "generation": {"hf", "hf_320", "hf_paged", "hf_paged_320", "vllm"},
        "training": {"lora", "full"},
    }.items():
        assert set(doc[group]) == keys
        for part in doc[group].values():
            assert set(part) == PART_FIELDS
    assert {r["stage"] for r in doc["projection"]["rows"]} == {"generate", "reward", "train", "total"}


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "x-alpacaeval").exists(), reason="needs ../shared/data")
def test_tiny_dry_run_writes_results_with_the_schema(bench, tmp_path):
    doc = bench.main(["--shape", "tiny", "--out", str(tmp_path)])
    _check_schema(doc)
    assert json.loads((tmp_path / "gpu-latest.json").read_text()) == doc
    assert doc["status"] == "dry-run" and "say nothing about a GPU" in (tmp_path / "gpu-latest.md").read_text()
    ours, ref = doc["scoring"]["ours"], doc["scoring"]["reference"]
    assert ours["status"] == ref["status"] == doc["scoring"]["ceiling"]["status"] == "measured"
    assert ours["tokens"] == ref["tokens"] == doc["workload"]["response_tokens"]
    assert ours["tokens"] > 0
    assert ours["share_of_matmul"] > 0 and doc["speedup_vs_reference"] > 0
    for key, prompts in {"hf": 8, "hf_320": 32, "hf_paged": 8, "hf_paged_320": 32}.items():
        part = doc["generation"][key]
        assert part["status"] == "measured" and part["tokens"] > 0, (key, part)
        assert part["settings"]["prompts"] == min(prompts, doc["workload"]["prompts"])
    assert doc["generation"]["vllm"]["status"] == "skipped" and doc["generation"]["vllm"]["reason"]
    for part in doc["training"].values():  # measured where trl is installed, else skipped with the reason
        assert part["status"] == "measured" or "not installed" in part["reason"]
    assert all(r["hours"] is None and r["label"] == "not yet measured" for r in doc["projection"]["rows"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_shapes_stop_without_cuda(bench, tmp_path):
    with pytest.raises(SystemExit, match="needs an NVIDIA GPU"):
        bench.main(["--shape", "llama3-8b", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_placeholder_says_not_yet_measured(bench, tmp_path):
    doc = bench.main(["--placeholder", "--out", str(tmp_path)])
    _check_schema(doc)
    assert doc["status"] == "not-measured"
    text = (tmp_path / "gpu-latest.md").read_text()
    assert "Not measured: no NVIDIA GPU was found when this file was written" in text
    assert "session" not in text


def test_projection_formula_from_measured_rates(bench):
    from gpu_report import projection

    doc = bench.skeleton("measured", None, "llama3-8b")
    doc["device"] = {"name": "GPU"}
    doc["workload"] = {"prompts": 2, "n": 10, "response_tokens": 20 * 500}  # 500 tokens a response
    doc["generation"]["hf"].update(status="measured", tokens_per_s=1000.0)
    doc["scoring"]["ours"].update(status="measured", tokens_per_s=20000.0)
    doc["training"]["lora"].update(status="measured", seconds=3.0, settings={"pairs": 2})
    rows = {(r["stage"], r["gpus"]): r for r in projection(doc)["rows"]}
    responses = 3000 * 5 * 10
    assert rows["generate", 1]["hours"] == pytest.approx(responses * 500 / 1000 / 3600)
    assert rows["reward", 1]["hours"] == pytest.approx(2 * responses * 500 / 20000 / 3600)
    assert rows["train", 1]["hours"] == pytest.approx(15000 / 2 * 3.0 / 3600)
    single = sum(rows[s, 1]["hours"] for s in ("generate", "reward", "train"))
    assert rows["total", 8]["hours"] == pytest.approx(single / 8)
    assert "linear scaling assumed" in rows["total", 8]["label"] and "projected" in rows["generate", 1]["label"]
    unmeasured = copy.deepcopy(doc)
    unmeasured["scoring"]["ours"]["status"] = "skipped"
    rows = {(r["stage"], r["gpus"]): r for r in projection(unmeasured)["rows"]}
    assert rows["reward", 1]["hours"] is None and rows["total", 1]["label"] == "not yet measured"
