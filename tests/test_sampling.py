"""Generation: per-prompt seeds, record fields, skipped long prompts, resuming."""

from __future__ import annotations

import pytest
import torch

from icr.config import GenerateConfig, ModelsConfig
from icr.data import Prompt, read_jsonl
from icr.models import load_model
from icr.sampling import HFGenerator, RowSeededSampler, make_generator, prompt_seed
from icr.stages.generate import generate_language

MAX_NEW = 6


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


def config(n=4, max_new_tokens=MAX_NEW, **kw) -> GenerateConfig:
    return GenerateConfig(n=n, max_new_tokens=max_new_tokens, **kw)


def test_same_seed_same_responses_other_seed_other_responses(tiny_lm):
    gen = make_generator("tiny", config(), ModelsConfig(), lambda spec: tiny_lm)
    assert isinstance(gen, HFGenerator)
    a, b, c = (gen.sample_batch(["Tell me a story."], 4, [seed])[0] for seed in (123, 123, 124))
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.text for s in a] != [s.text for s in c]
    assert len({s.text for s in a}) > 1  # the n samples differ from each other


def test_prompt_cache_and_left_padding_do_not_change_samples(tiny_lm):
    """Prefilling the prompts once (left-padded, cache expanded to n rows) must give what a plain
    generate() over the full prompts gives with the same per-row streams."""
    from transformers import LogitsProcessorList

    from icr.models import prompt_ids

    cfg = config(n=2)
    gen = HFGenerator(tiny_lm, cfg)
    texts = ["Name a colour.", "Write one long sentence about the history of the bicycle, please."]
    ours = gen.sample_batch(texts, 2, [11, 12])
    tok = tiny_lm.tokenizer
    for text, seed, got in zip(texts, [11, 12], ours):
        ids = torch.tensor([prompt_ids(tok, text)]).repeat(2, 1)
        with torch.no_grad():
            out = tiny_lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=MAX_NEW,
                logits_processor=LogitsProcessorList(
                    [RowSeededSampler([seed * 1000, seed * 1000 + 1], 0.9, 1.0, "cpu")]
                ),
                eos_token_id=gen.stop_ids,
                pad_token_id=tok.pad_token_id,
            )
        plain = [gen._decode(row) for row in out[:, ids.shape[1] :].tolist()]
        assert [s.text for s in got] == [s.text for s in plain]


def test_samples_do_not_depend_on_batch_partners(tiny_lm):
    gen = HFGenerator(tiny_lm, config(n=3))
    a, b = "Hi", "Explain photosynthesis to a child in a few words."
    together = gen.sample_batch([a, b], 3, [1, 2])
    assert [s.text for s in gen.sample_batch([b], 3, [2])[0]] == [s.text for s in together[1]]
    assert [s.text for s in gen.sample_batch([a], 3, [1])[0]] == [s.text for s in together[0]]


def test_row_seeded_sampler_draws_from_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    temperature = 0.7
    sampler = RowSeededSampler([3], temperature, 1.0, "cpu")
    draws = torch.tensor([int(sampler(None, logits).argmax()) for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    want = torch.softmax(logits[0] / temperature, -1)
    assert torch.allclose(freq, want, atol=0.03)
    # top-p: tokens outside the nucleus are never drawn
    nucleus = RowSeededSampler([3], 1.0, 0.5, "cpu")
    assert {int(nucleus(None, logits).argmax()) for _ in range(300)} == {0}
    # same seed, same stream; rows are independent streams
    two = RowSeededSampler([5, 6], 1.0, 1.0, "cpu")(None, logits.repeat(2, 1))
    again = RowSeededSampler([5, 9], 1.0, 1.0, "cpu")(None, logits.repeat(2, 1))
    assert torch.equal(two[0], again[0]) and not torch.equal(two[1], again[1])


def test_records_have_n_responses_and_consistent_token_counts(eos_prone_lm, tmp_path):
    prompts = [Prompt(f"p{k}", "en", f"Question {k}: what is {k} plus {k}?") for k in range(4)]
    cfg = config(n=6)
    recs = generate_language(
        HFGenerator(eos_prone_lm, cfg), prompts, tmp_path / "en.jsonl", cfg, seed=0, iteration=0, max_prompt_tokens=1024
    )
    assert [r["id"] for r in recs] == ["p0", "p1", "p2", "p3"]
    flags = []
    for r, p in zip(recs, prompts):
        assert r["lang"] == "en" and r["prompt"] == p.text and r["seed"] == prompt_seed(0, 0, "en", p.id)
        assert len(r["responses"]) == len(r["n_tokens"]) == len(r["truncated"]) == 6
        assert all(isinstance(t, str) for t in r["responses"])
        for n_tok, trunc in zip(r["n_tokens"], r["truncated"]):
            assert 0 <= n_tok <= MAX_NEW
            assert trunc == (n_tok == MAX_NEW)  # truncated exactly when the limit was hit
            flags.append(trunc)
    assert any(flags) and not all(flags)  # both kinds occurred
    assert read_jsonl(tmp_path / "en.jsonl") == recs


def test_decode_stops_at_the_first_end_of_turn(tiny_lm):
    gen = HFGenerator(tiny_lm, config())
    eos = tiny_lm.tokenizer.eos_token_id
    hello = tiny_lm.tokenizer.encode("Hello world")
    s = gen._decode(hello + [eos, eos, eos])
    assert s.text == "Hello world" and s.n_tokens == len(hello) and not s.truncated
    s = gen._decode(hello)
    assert s.truncated and s.n_tokens == len(hello)
    s = gen._decode([eos] + hello)
    assert s.text == "" and s.n_tokens == 0 and not s.truncated


def test_long_prompt_gets_a_skipped_record(tiny_lm, tmp_path):
    short = Prompt("short", "es", "Hola")
    long = Prompt("long", "es", "palabra " * 200)
    gen = HFGenerator(tiny_lm, config(n=2))
    limit = gen.prompt_length("Hola") + 5
    assert gen.prompt_length(long.text) > limit
    recs = generate_language(gen, [short, long], tmp_path / "es.jsonl", config(n=2), 0, 0, max_prompt_tokens=limit)
    assert [r["id"] for r in recs] == ["short", "long"]  # not dropped, kept in order
    assert "skipped" not in recs[0] and len(recs[0]["responses"]) == 2
    assert recs[1]["responses"] == [] and recs[1]["n_tokens"] == [] and recs[1]["truncated"] == []
    assert str(limit) in recs[1]["skipped"] and "max_prompt_tokens" in recs[1]["skipped"]


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_resumed_generation_is_byte_identical(tiny_lm, tmp_path, cut):
    """A crash after `cut` records (plus half a line): the rest is generated, the chunk it fell in
    decoded again whole, and the file ends byte-identical to an uninterrupted run's."""
    prompts = [Prompt(f"id{k}", "de", f"Frage {k}" + "?" * k) for k in range(5)]
    cfg = config(n=2, batch_prompts=2)
    gen = HFGenerator(tiny_lm, cfg)
    full_file = tmp_path / "full.jsonl"
    full = generate_language(gen, prompts, full_file, cfg, 5, 1, 1024)
    lines = full_file.read_text(encoding="utf-8").splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2], encoding="utf-8")
    resumed = generate_language(gen, prompts, partial, cfg, 5, 1, 1024)
    assert resumed == full
    assert partial.read_bytes() == full_file.read_bytes()


def test_prompts_already_done_are_not_sampled_again(tiny_lm, tmp_path):
    prompts = [Prompt("a", "en", "One?"), Prompt("b", "en", "Two?")]
    cfg = config(n=2)
    gen = HFGenerator(tiny_lm, cfg)
    generate_language(gen, prompts, tmp_path / "en.jsonl", cfg, 0, 0, 1024)
    calls = []

    class Spy:
        def prompt_length(self, text):
            calls.append(text)
            return 1

        def sample_batch(self, *a):
            raise AssertionError("sampled again")

    assert len(generate_language(Spy(), prompts, tmp_path / "en.jsonl", cfg, 0, 0, 1024)) == 2
    assert calls == []


def test_prompt_seed_depends_on_every_part():
    base = prompt_seed(0, 0, "en", "1")
    assert base == prompt_seed(0, 0, "en", "1")
    assert (
        len(
            {
                base,
                prompt_seed(1, 0, "en", "1"),
                prompt_seed(0, 1, "en", "1"),
                prompt_seed(0, 0, "es", "1"),
                prompt_seed(0, 0, "en", "2"),
            }
        )
        == 5
    )
    assert 0 <= base < 2**31
