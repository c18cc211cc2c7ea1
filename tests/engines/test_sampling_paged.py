"""The hf-paged backend (transformers continuous batching): request building, result parsing, and
real decoding on the CPU with a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers import generate_config
from icr.config import ModelsConfig
from icr.core.errors import IcrError
from icr.engines.sampling import make_generator
from icr.engines.sampling.hf_paged import HFPagedGenerator, call_seed, group_outputs


def out(tokens, error=None):
    return SimpleNamespace(generated_tokens=tokens, error=error)


def test_rows_are_grouped_by_parent_request_in_input_order():
    # generate_batch's order: each parent's forked children, then the parent
    results = {
        "req_7__child#0": out([1]),
        "req_7": out([2]),
        "req_8__child#0": out([3]),
        "req_8": out([4]),
        "req_10__child#0": out([5]),
        "req_10": out([6]),
    }
    assert group_outputs(results, n_prompts=3, n=2) == [[[1], [2]], [[3], [4]], [[5], [6]]]


def test_a_failed_or_missing_row_is_an_error_not_a_short_chunk():
    with pytest.raises(IcrError, match="req_1"):
        group_outputs({"req_1": out([1], error="cache full"), "req_1__child#0": out([2])}, 1, 2)
    with pytest.raises(IcrError, match=r"rows \[2, 1\] for 2 prompts × 2"):
        group_outputs({"req_0__child#0": out([1]), "req_0": out([2]), "req_1": out([3])}, 2, 2)


def test_call_seed_follows_the_prompts_seeds_and_their_order():
    assert call_seed([3, 4]) == call_seed([3, 4])
    assert len({call_seed([3, 4]), call_seed([4, 3]), call_seed([3]), call_seed([3, 5])}) == 4
    assert 0 <= call_seed([2**40]) < 2**31


def test_generation_config_asks_for_n_rows_per_prompt_and_no_top_k(tiny_lm):
    generator = HFPagedGenerator(tiny_lm, generate_config(backend="hf-paged", temperature=0.7, top_p=0.95))
    config = generator.generation_config(n=4)
    assert (config.num_return_sequences, config.temperature, config.top_p, config.top_k) == (4, 0.7, 0.95, 0)
    assert config.do_sample and tiny_lm.tokenizer.eos_token_id in config.eos_token_id


@pytest.mark.slow
def test_a_chunk_decodes_n_samples_per_prompt_and_the_same_chunk_gives_the_same_samples(tiny_lm):
    config = generate_config(backend="hf-paged", max_new_tokens=4)
    generator = make_generator("tiny", config, ModelsConfig(), load=lambda spec: tiny_lm)
    assert isinstance(generator, HFPagedGenerator)
    texts, seeds = ["Hello there", "Write a poem", "Hola"], [11, 12, 13]
    first = generator.sample_batch(texts, 2, seeds)
    assert [len(samples) for samples in first] == [2, 2, 2]
    assert all(s.response_tokens <= 4 and (not s.truncated or s.response_tokens == 4) for p in first for s in p)
    assert generator.sample_batch(texts, 2, seeds) == first
    assert generator.sample_batch(texts, 2, [11, 12, 14]) != first
