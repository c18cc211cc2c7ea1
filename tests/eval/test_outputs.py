"""Model outputs (`icr.eval.outputs`): model options, the models of a run folder, and generation that
decodes whole chunks, resumes after a kill and refuses mixed settings."""

from __future__ import annotations

import json

import pytest

from helpers import OUTPUT_FIELDS, REFERENCE, eval_decoding, write_benchmark
from icr.engines.sampling.base import Sample
from icr.eval.benchmark import OutputsError, load_benchmark
from icr.eval.outputs import EvalModel, generate_outputs, parse_model_option
from icr.runtime.rundir import run_models


def test_model_options_and_run_dir(tmp_path):
    assert parse_model_option("base=org/model-7b") == EvalModel("base", "org/model-7b")
    assert parse_model_option("runs/x/iter_0/model") == EvalModel("model", "runs/x/iter_0/model")
    run = tmp_path / "run"
    (run / "iter_0" / "model").mkdir(parents=True)
    (run / "iter_0" / "model" / "config.json").write_text("{}")
    (run / "iter_1" / "generations").mkdir(parents=True)  # unfinished iteration: no model yet
    (run / "config.yaml").write_text("models:\n  policy: org/dpo-model\n")
    assert run_models(run) == [("pi0", "org/dpo-model"), ("pi1", str(run / "iter_0" / "model"))]


class CountingBatchGenerator:
    def __init__(self):
        self.calls = []

    def sample_batch(self, instructions, n, seeds):
        self.calls += list(zip(instructions, seeds))
        return [[Sample(f"answer to {text}", 3, False) for _ in range(n)] for text in instructions]


def test_batched_generation_decodes_an_incomplete_chunk_whole_but_keeps_what_was_written(tmp_path):
    bench = write_benchmark(tmp_path / "bench", langs=("fr",), n=5)
    items = load_benchmark(bench / "prompts", bench / "reference" / REFERENCE, "fr")
    folder, model = tmp_path / "out", EvalModel("m", "some/model")
    generate_outputs(CountingBatchGenerator(), model, "fr", items[:2], folder, eval_decoding(batch_prompts=4), 0)
    lines = (folder / "generations.jsonl").read_text()
    resumed = CountingBatchGenerator()
    outputs = generate_outputs(resumed, model, "fr", items, folder, eval_decoding(batch_prompts=4), 0)
    assert [c[0] for c in resumed.calls] == [it["instruction"] for it in items]  # chunks [1-4] and [5]
    assert (folder / "generations.jsonl").read_text().startswith(lines) and len(outputs) == 5
    assert len((folder / "generations.jsonl").read_text().splitlines()) == 5


def test_generation_resumes_and_refuses_mixed_settings(tmp_path):
    bench = write_benchmark(tmp_path / "bench", langs=("fr",), n=6)
    items = load_benchmark(bench / "prompts", bench / "reference" / REFERENCE, "fr")
    folder = tmp_path / "outputs" / "m" / "fr"
    model, sampling = EvalModel("m", "some/model"), eval_decoding(max_new_tokens=8)
    first = CountingBatchGenerator()
    generate_outputs(first, model, "fr", items[:2], folder, sampling, 0)
    with open(folder / "generations.jsonl", "a") as f:
        f.write('{"id": 5, "instr')  # a write cut by a kill
    resumed = CountingBatchGenerator()
    outputs = generate_outputs(resumed, model, "fr", items, folder, sampling, 0)
    # the chunk (the 6 items) is decoded again whole, as an uninterrupted run decodes it; 4 are written
    assert len(first.calls) == 2 and len(resumed.calls) == 6
    assert sorted(outputs) == [str(i) for i in range(1, 7)]
    written = json.loads((folder / "model_outputs.json").read_text())
    assert [r["id"] for r in written] == [1, 2, 3, 4, 5, 6] and all(set(r) == OUTPUT_FIELDS for r in written)
    assert written[0] == {
        "generator": "m",
        "dataset": "synthetic",
        "id": 1,
        "instruction": items[0]["instruction"],
        "output": f"answer to {items[0]['instruction']}",
    }
    seeds = {json.loads(line)["id"]: json.loads(line)["seed"] for line in (folder / "generations.jsonl").open()}
    assert len(set(seeds.values())) == 6  # one seed per instruction
    with pytest.raises(OutputsError, match="generated with"):
        generate_outputs(CountingBatchGenerator(), model, "fr", items, folder, eval_decoding(temperature=1.0), 0)
