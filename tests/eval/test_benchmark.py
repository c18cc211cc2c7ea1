"""The benchmark (`icr.eval.benchmark`): X-AlpacaEval from the shared folder, and model outputs that
do not match the benchmark refused, naming the id, before any judging."""

from __future__ import annotations

import json

import pytest

from helpers import REFERENCE, X_ALPACAEVAL, eval_config, needs_shared, write_benchmark, write_outputs
from icr.eval.benchmark import OutputsError, load_benchmark, read_outputs, resolve_sources
from icr.eval.outputs import EvalModel
from icr.eval.run import evaluate


@needs_shared
def test_loads_x_alpacaeval_from_the_shared_folder():
    prompt_dir, ref_dir = resolve_sources(str(X_ALPACAEVAL), None)
    assert prompt_dir == X_ALPACAEVAL / "prompts" and ref_dir.name == REFERENCE
    ref_en = json.loads((ref_dir / "en.json").read_text(encoding="utf-8"))  # alpaca_eval's file: no ids
    for lang in ("en", "de"):
        items = load_benchmark(prompt_dir, ref_dir, lang, limit=5)
        assert [it["id"] for it in items] == [1, 2, 3, 4, 5]
        assert all(it["reference"] and it["reference_generator"] == REFERENCE for it in items)
    assert load_benchmark(prompt_dir, ref_dir, "en", limit=3)[2]["reference"] == ref_en[2]["output"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda recs: recs.pop(3), "no output for id 4"),
        (lambda recs: recs.append(dict(recs[1])), "id 2: duplicate id"),
        (lambda recs: recs[2].update(instruction="Something else entirely"), "id 3: instruction differs"),
        (lambda recs: recs[0].update(id=99), "id 99: not an id of the benchmark"),
    ],
)
def test_bad_outputs_are_errors_naming_the_id(tmp_path, edit, message):
    bench = write_benchmark(tmp_path / "bench", langs=("de",), n=6)
    outs = write_outputs(tmp_path / "outs", bench, lambda i: f"Antwort {i}", langs=("de",))
    records = json.loads((outs / "de.json").read_text())
    edit(records)
    (outs / "de.json").write_text(json.dumps(records))
    items = load_benchmark(bench / "prompts", bench / "reference" / REFERENCE, "de")
    with pytest.raises(OutputsError, match=message):
        read_outputs(outs, "de", items)

    def no_judge():
        raise AssertionError("outputs must be validated before any judging")

    with pytest.raises(OutputsError, match=message):
        evaluate(eval_config(bench, tmp_path / "out", languages=["de"]), [EvalModel("m", outputs=str(outs))], no_judge)
