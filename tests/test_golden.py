"""The refactor guard: a fixed tiny-model `icr run` (en, es; one iteration) and `icr eval` with the
offline judge write byte-for-byte the files whose hashes tests/golden/run_and_eval.json recorded
(scripts/record_golden.py says what is normalised, and why)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "record_golden.py"
spec = importlib.util.spec_from_file_location("record_golden", SCRIPT)
record_golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(record_golden)


@pytest.mark.slow
@pytest.mark.skipif(not record_golden.X_ALPACAEVAL.exists(), reason="../shared/data is not available")
def test_run_and_eval_outputs_are_byte_identical_to_the_golden_record(tmp_path):
    recorded = json.loads(record_golden.GOLDEN.read_text(encoding="utf-8"))
    if recorded["environment"] != record_golden.environment():
        pytest.skip(f"golden hashes recorded on {recorded['environment']}, not this build")
    current = record_golden.compute(tmp_path / "golden")
    assert record_golden.compare(recorded, current) == []
    assert len(current["files"]) == len(recorded["files"])
