"""The evaluation run (`icr.eval.run`, `icr.eval.leaderboard`) and `icr eval`: the leaderboard with the
offline (hf) judge, swap symmetry, every iteration of a run in one table, and one run of the real
SmolLM2 model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from helpers import (
    EMBEDDED,
    OUTPUT_FIELDS,
    REFERENCE,
    X_ALPACAEVAL,
    eval_config,
    eval_decoding,
    needs_shared,
    offline_eval_flags,
    write_benchmark,
    write_outputs,
)
from icr.eval.judges.hf import HFJudge
from icr.eval.outputs import EvalModel
from icr.eval.run import evaluate


def test_offline_judge_builds_the_leaderboard_and_resumes(tmp_path, tiny_lm, gamed_csv, monkeypatch):
    bench = write_benchmark(tmp_path / "bench", langs=("en", "de"), n=6)
    judges = []

    def make_judge():
        judges.append(HFJudge(tiny_lm, batch_size=4))
        return judges[-1]

    config = eval_config(
        bench,
        tmp_path / "out",
        languages=["en", "de"],
        judge={"cache": str(tmp_path / "cache")},
        sampling=eval_decoding(max_new_tokens=4),
        lc_data=str(gamed_csv),
        device="cpu",
    )
    args = dict(config=config, models=[EvalModel("tiny", tiny_lm.path)], judge_factory=make_judge)
    table = evaluate(**args)
    assert list(table["lang"]) == ["en", "de"] and list(table["n_pairs"]) == [6, 6]
    assert ((table["n_wins"] + table["n_losses"] + table["n_draws"]) == 6).all()
    assert table["win_rate"].between(0, 100).all() and table["lc_win_rate"].between(0, 100).all()
    assert (table["lc_scope"] == "subset (6 of 805)").all()
    out = tmp_path / "out"
    board = pd.read_csv(out / "leaderboard.csv", index_col="model")
    assert list(board.columns) == ["en LC", "en WR", "en n", "de LC", "de WR", "de n", "Avg LC", "Avg WR"]
    assert board.at["tiny", "Avg WR"] == pytest.approx(table["win_rate"].mean())
    md = (out / "leaderboard.md").read_text()
    assert "| tiny |" in md and "(n=6)" in md and "subset" in md and "hf `" in md
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for lang in ("en", "de"):
        written = json.loads((out / "outputs" / "tiny" / lang / "model_outputs.json").read_text())
        assert len(written) == 6 and all(set(r) == OUTPUT_FIELDS and r["generator"] == "tiny" for r in written)
        anns = json.loads((out / "annotations" / "tiny" / f"{lang}.json").read_text())
        assert [a["id"] for a in anns] == [1, 2, 3, 4, 5, 6] and all(1 <= a["preference"] <= 2 for a in anns)
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["backend"] == "hf" and results["judging"]["requested"] == 12

    def no_generation(*a, **k):
        raise AssertionError("outputs exist: nothing to generate")

    monkeypatch.setattr("icr.eval.run.open_generator", no_generation)
    again = evaluate(**args)
    assert json.loads((out / "results.json").read_text())["judging"]["requested"] == 0
    pd.testing.assert_frame_equal(again, table)


def _bench_with_reference(root: Path, reference_text, n: int = 8) -> Path:
    bench = write_benchmark(root, langs=("en",), n=n)
    ref = json.loads((bench / "reference" / REFERENCE / "en.json").read_text())
    for i, r in enumerate(ref, start=1):
        r["output"] = reference_text(i)
    (bench / "reference" / REFERENCE / "en.json").write_text(json.dumps(ref))
    return bench


@pytest.mark.parametrize("order", ["random", "both"])
def test_swapping_model_and_reference_turns_w_into_100_minus_w(tmp_path, tiny_lm, order):
    a = lambda i: f"A cat sat on mat number {i}." * (1 + i % 3)  # noqa: E731
    b = lambda i: f"Dogs run in park {i}, quickly!"  # noqa: E731
    rates = []
    for name, model_text, ref_text in (("fwd", a, b), ("swap", b, a)):
        bench = _bench_with_reference(tmp_path / name / "bench", ref_text)
        outs = write_outputs(tmp_path / name / "outs", bench, model_text, langs=("en",))
        config = eval_config(
            bench,
            tmp_path / name / "out",
            languages=["en"],
            lc=False,
            judge={"cache": str(tmp_path / "cache"), "order": order},
        )
        table = evaluate(config, [EvalModel("m", outputs=str(outs))], lambda: HFJudge(tiny_lm, 4))
        rates.append(float(table.at[0, "win_rate"]))
    assert 0 < rates[0] < 100 and rates[0] != pytest.approx(50, abs=1e-6)
    assert rates[1] == pytest.approx(100 - rates[0], abs=1e-9)


def test_eval_command_fills_one_table_with_every_iteration_of_a_run(tmp_path, tiny_lm):
    import shutil

    from click.testing import CliRunner

    from icr.cli.commands import eval_command

    run = tmp_path / "run"
    shutil.copytree(tiny_lm.path, run / "iter_0" / "model")  # "π1": same weights as π0 here
    (run / "config.yaml").write_text(f"models:\n  policy: {tiny_lm.path}\n")
    bench = write_benchmark(tmp_path / "bench", langs=("es",), n=3)
    outs = write_outputs(tmp_path / "outs", bench, lambda i: f"Respuesta {i}", langs=("es",))
    result = CliRunner().invoke(
        eval_command,
        [
            "--run-dir",
            str(run),
            "--outputs",
            f"given={outs}",
            *offline_eval_flags(bench, tiny_lm.path, tmp_path / "cache"),
            "--output",
            str(tmp_path / "out"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv", index_col="model")
    assert list(board.index) == ["pi0", "pi1", "given"] and (board["es n"] == 3).all()
    # π0 and π1 have the same weights and seeds: the same outputs, hence the same judgements
    assert board.at["pi0", "es WR"] == board.at["pi1", "es WR"]
    assert "| pi1 |" in result.output and "LC n/a: disabled" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_eval_command_documents_every_option():
    from icr.cli.commands import eval_command

    for param in eval_command.params:
        assert getattr(param, "help", None), f"--{param.name} has no help text"
    names = {opt for p in eval_command.params for opt in p.opts}
    for required in (
        "--model",
        "--run-dir",
        "--languages",
        "--prompts",
        "--reference-outputs",
        "--limit",
        "--judge",
        "--judge-model",
        "--judge-base-url",
        "--output",
        "--temperature",
        "--top-p",
        "--max-new-tokens",
    ):
        assert required in names


@pytest.mark.slow
@needs_shared
def test_real_smollm2_on_x_alpacaeval_with_the_offline_judge(tmp_path):
    from icr.core.models import load_model

    config = eval_config(
        X_ALPACAEVAL,
        tmp_path / "out",
        languages=["en", "de"],
        limit=3,
        lc=False,
        device="cpu",
        judge={"cache": str(tmp_path / "cache")},
        sampling=eval_decoding(max_new_tokens=16),
    )
    table = evaluate(
        config, [EvalModel("smollm2", EMBEDDED)], lambda: HFJudge(load_model(EMBEDDED, device="cpu"), batch_size=1)
    )
    assert list(table["n_pairs"]) == [3, 3] and table["win_rate"].between(0, 100).all()
    assert (table["standard_error"] >= 0).all() and table["language_fidelity"].between(0, 100).all()
    outputs = json.loads((tmp_path / "out" / "outputs" / "smollm2" / "en" / "model_outputs.json").read_text())
    assert [r["id"] for r in outputs] == [1, 2, 3] and all(r["output"].strip() for r in outputs)
    anns = json.loads((tmp_path / "out" / "annotations" / "smollm2" / "de.json").read_text())
    assert all(1 < a["preference"] < 2 and a["rule"] == "logprobs" for a in anns)  # a real, non-degenerate verdict


def test_api_judge_without_a_key_stops_before_any_output_is_generated(tmp_path, monkeypatch):
    """The default judge (alpaca_eval on OpenAI's endpoint) with no OPENAI_API_KEY: exit code 2,
    a sentence naming the key and the offline judge, and no outputs folder."""
    from click.testing import CliRunner

    from icr.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    bench = write_benchmark(tmp_path / "bench", langs=("es",), n=2)
    out = tmp_path / "eval"
    args = ["eval", "--prompts", str(bench), "--output", str(out), "--model", EMBEDDED, "--languages", "es"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "OPENAI_API_KEY is not set" in result.output and "--judge hf" in result.output
    assert not (out / "outputs").exists()
    # a key, a local endpoint or the local judge each lets it through
    from icr.config import JudgeConfig
    from icr.eval.judges import credentials_problem

    assert credentials_problem(JudgeConfig(backend="hf")) is None
    assert credentials_problem(JudgeConfig(backend="openai", base_url="http://localhost:8000/v1")) is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert credentials_problem(JudgeConfig(backend="openai")) is None
