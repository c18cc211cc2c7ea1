"""Stage drivers (`icr.stages`): the generate stage's records (n responses, token counts, seeds),
skipped long prompts kept in order, and resuming a generation file byte for byte."""

from __future__ import annotations

import pytest

from helpers import MAX_NEW, generate_config
from icr.core.io import read_jsonl
from icr.core.models import load_model
from icr.core.prompts import Prompt
from icr.engines.sampling.base import prompt_seed
from icr.engines.sampling.hf import HFGenerator
from icr.stages.generate import generate_language


@pytest.fixture(scope="module")
def eos_prone_lm(tiny_dir):
    """A tiny model that ends its turn with probability ~0.15 per token, so that some samples stop
    early and some hit max_new_tokens."""
    lm = load_model(str(tiny_dir), device="cpu")
    eos = lm.tokenizer.eos_token_id

    def bias(module, inputs, output):
        output = output.clone()
        output[..., eos] += 8.0
        return output

    lm.model.get_output_embeddings().register_forward_hook(bias)
    return lm


def test_records_have_n_responses_and_consistent_token_counts(eos_prone_lm, tmp_path):
    prompts = [Prompt(f"p{k}", "en", f"Question {k}: what is {k} plus {k}?") for k in range(4)]
    cfg = generate_config(n=6)
    recs = generate_language(
        HFGenerator(eos_prone_lm, cfg), prompts, tmp_path / "en.jsonl", cfg, seed=0, iteration=0, max_prompt_tokens=1024
    )
    assert [r["id"] for r in recs] == ["p0", "p1", "p2", "p3"]
    flags = []
    for r, p in zip(recs, prompts):
        assert r["lang"] == "en" and r["prompt"] == p.text and r["seed"] == prompt_seed(0, 0, "en", p.id)
        assert len(r["responses"]) == len(r["response_tokens"]) == len(r["truncated"]) == 6
        assert all(isinstance(t, str) for t in r["responses"])
        for n_tok, trunc in zip(r["response_tokens"], r["truncated"]):
            assert 0 <= n_tok <= MAX_NEW
            assert trunc == (n_tok == MAX_NEW)  # truncated exactly when the limit was hit
            flags.append(trunc)
    assert any(flags) and not all(flags)  # both kinds occurred
    assert read_jsonl(tmp_path / "en.jsonl") == recs


def test_long_prompt_gets_a_skipped_record(tiny_lm, tmp_path):
    short = Prompt("short", "es", "Hola")
    long = Prompt("long", "es", "palabra " * 200)
    gen = HFGenerator(tiny_lm, generate_config(n=2))
    limit = gen.prompt_length("Hola") + 5
    assert gen.prompt_length(long.text) > limit
    recs = generate_language(
        gen, [short, long], tmp_path / "es.jsonl", generate_config(n=2), seed=0, iteration=0, max_prompt_tokens=limit
    )
    assert [r["id"] for r in recs] == ["short", "long"]  # not dropped, kept in order
    assert "skipped" not in recs[0] and len(recs[0]["responses"]) == 2
    assert recs[1]["responses"] == [] and recs[1]["response_tokens"] == [] and recs[1]["truncated"] == []
    assert str(limit) in recs[1]["skipped"] and "max_prompt_tokens" in recs[1]["skipped"]


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_resumed_generation_is_byte_identical(tiny_lm, tmp_path, cut):
    """A crash after `cut` records (plus half a line): the rest is generated, the chunk it fell in
    decoded again whole, and the file ends byte-identical to an uninterrupted run's."""
    prompts = [Prompt(f"id{k}", "de", f"Frage {k}" + "?" * k) for k in range(5)]
    cfg = generate_config(n=2, batch_prompts=2)
    gen = HFGenerator(tiny_lm, cfg)
    full_file = tmp_path / "full.jsonl"
    full = generate_language(gen, prompts, full_file, cfg, seed=5, iteration=1, max_prompt_tokens=1024)
    lines = full_file.read_text(encoding="utf-8").splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2], encoding="utf-8")
    resumed = generate_language(gen, prompts, partial, cfg, seed=5, iteration=1, max_prompt_tokens=1024)
    assert resumed == full
    assert partial.read_bytes() == full_file.read_bytes()


def test_prompts_already_done_are_not_sampled_again(tiny_lm, tmp_path):
    prompts = [Prompt("a", "en", "One?"), Prompt("b", "en", "Two?")]
    cfg = generate_config(n=2)
    gen = HFGenerator(tiny_lm, cfg)
    generate_language(gen, prompts, tmp_path / "en.jsonl", cfg, seed=0, iteration=0, max_prompt_tokens=1024)
    calls = []

    class Spy:
        def prompt_length(self, text):
            calls.append(text)
            return 1

        def sample_batch(self, *a):
            raise AssertionError("sampled again")

    assert (
        len(generate_language(Spy(), prompts, tmp_path / "en.jsonl", cfg, seed=0, iteration=0, max_prompt_tokens=1024))
        == 2
    )
    assert calls == []


def test_a_stage_with_a_missing_input_names_it_before_its_driver_runs(tmp_path):
    from icr.config import RunConfig
    from icr.core.errors import DataError
    from icr.runtime.rundir import RunDir
    from icr.stages import STAGES
    from icr.stages.base import StageContext

    run = RunDir(RunConfig(name="r", output_dir=str(tmp_path), data={"languages": ["en", "es"]}))
    run.rewards_dir(0).mkdir(parents=True)
    (run.rewards_dir(0) / "en.jsonl").write_text("")
    ctx = StageContext(run=run, t=0, pool=None, prompts=None)
    with pytest.raises(DataError, match=r"stage pairs of iteration 0 needs .*iter_0/rewards/es\.jsonl") as err:
        STAGES["pairs"].execute(ctx)
    assert "en.jsonl" not in str(err.value)
    assert not run.status_file(0, "pairs").exists()  # refused before it was recorded as started
