"""The sampling engine (`icr.engines.sampling`): per-row seeds, per-prompt seeds, samples independent of the
prompt cache, padding and batch partners, decoding up to the end of turn."""

from __future__ import annotations

import torch

from helpers import MAX_NEW, generate_config
from icr.config import ModelsConfig
from icr.engines.sampling import make_generator
from icr.engines.sampling.base import decode_generated, prompt_seed
from icr.engines.sampling.hf import HFGenerator, RowSeededSampler


def test_same_seed_same_responses_other_seed_other_responses(tiny_lm):
    gen = make_generator("tiny", generate_config(), ModelsConfig(), lambda spec: tiny_lm)
    assert isinstance(gen, HFGenerator)
    a, b, c = (gen.sample_batch(["Tell me a story."], 4, [seed])[0] for seed in (123, 123, 124))
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.text for s in a] != [s.text for s in c]
    assert len({s.text for s in a}) > 1  # the n samples differ from each other


def test_prompt_cache_and_left_padding_do_not_change_samples(tiny_lm):
    """Prefilling the prompts once (left-padded, cache expanded to n rows) must give what a plain
    generate() over the full prompts gives with the same per-row streams."""
    from transformers import LogitsProcessorList

    from icr.core.chat import prompt_ids

    cfg = generate_config(n=2)
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
        plain = [decode_generated(gen.lm.tokenizer, row, gen.stop_ids) for row in out[:, ids.shape[1] :].tolist()]
        assert [s.text for s in got] == [s.text for s in plain]


def test_samples_do_not_depend_on_batch_partners(tiny_lm):
    gen = HFGenerator(tiny_lm, generate_config(n=3))
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


def test_decode_stops_at_the_first_end_of_turn(tiny_lm):
    gen = HFGenerator(tiny_lm, generate_config())
    eos = tiny_lm.tokenizer.eos_token_id
    hello = tiny_lm.tokenizer.encode("Hello world")
    s = decode_generated(gen.lm.tokenizer, hello + [eos, eos, eos], gen.stop_ids)
    assert s.text == "Hello world" and s.response_tokens == len(hello) and not s.truncated
    s = decode_generated(gen.lm.tokenizer, hello, gen.stop_ids)
    assert s.truncated and s.response_tokens == len(hello)
    s = decode_generated(gen.lm.tokenizer, [eos] + hello, gen.stop_ids)
    assert s.text == "" and s.response_tokens == 0 and not s.truncated


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
