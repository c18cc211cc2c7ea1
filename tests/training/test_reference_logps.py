"""TRL-exact tokenization (`icr.core.chat.pair_tokens`) and the training reference log-probs
(`icr.training.reference_logps.pair_logps`), held to a real TRL DPOTrainer's own tokenization and
`compute_ref_log_probs`."""

from __future__ import annotations

import json

import pytest

from icr.config import RewardConfig
from icr.core.chat import common_prefix_length, pair_tokens, prompt_ids, tokenize_exchange
from icr.core.models import load_model
from icr.training.reference_logps import pair_logps

BUDGET = RewardConfig().token_budget
ENGLISH = "Name two colours of the rainbow."


def conv(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


PAIRS = [
    conv("Hi there", "Hello!", "Go away, please"),
    conv("Name a fruit.", "An apple is a fruit that grows on trees.", "No."),
    conv(ENGLISH + "\n\nPlease answer only in Spanish.", "Rojo y azul.", "El arcoíris tiene muchos colores."),
    conv(
        "Write a story about dragons", "Once upon a time a dragon lived in a cave and ate sheep every day.", "Dragons."
    ),
]
# responses whose first characters merge with the template's last token: TRL then cuts the
# prompt earlier, and the completion starts with a token of the prompt
DIVERGING_PAIRS = [conv("Hi", "\n\nHello", "Bye"), conv("Hi", "Bye", "  x")]
# a system turn before the user turn, and the same pair with plain-string fields (TRL's standard
# format is not conversational, so only the message form goes into TRL's dataset)
SYSTEM_PAIR = {
    "prompt": [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": ENGLISH}],
    "chosen": [{"role": "assistant", "content": "Red and blue."}],
    "rejected": [{"role": "assistant", "content": "Colours."}],
}


@pytest.fixture(scope="module")
def trl_trainer(tiny_ref_dir, tmp_path_factory):
    """A real TRL DPOTrainer on a fresh copy of the reference model (TRL patches its forward)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    lm = load_model(str(tiny_ref_dir), device="cpu", dtype="float32")
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        use_cpu=True,
        report_to=[],
        precompute_ref_log_probs=False,
        max_length=256,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=lm.model,
        args=args,
        train_dataset=Dataset.from_list(PAIRS + DIVERGING_PAIRS + [SYSTEM_PAIR]),
        processing_class=lm.tokenizer,
    )
    return trainer


def trl_rows(trainer, indices):
    return [trainer.train_dataset[i] for i in indices]


def test_tokenize_exchange_equals_trl_tokenization(tokenizer, trl_trainer):
    for k, pair in enumerate(PAIRS):
        row = trl_rows(trl_trainer, [k])[0]
        instruction = pair["prompt"][0]["content"]
        p_c, c = tokenize_exchange(tokenizer, instruction, pair["chosen"][0]["content"])
        p_r, r = tokenize_exchange(tokenizer, instruction, pair["rejected"][0]["content"])
        assert p_c == row["prompt_ids"] and p_r == row["prompt_ids"]
        assert c == row["chosen_ids"] and r == row["rejected_ids"]
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert end in c and end in r
        assert "<|im_end|>" in tokenizer.decode(c)
    # diverging prompts: the full sequence is TRL's, the prompt is a prefix of TRL's rendering
    for k, pair in enumerate(DIVERGING_PAIRS, start=len(PAIRS)):
        row = trl_rows(trl_trainer, [k])[0]
        instruction = pair["prompt"][0]["content"]
        for side in ("chosen", "rejected"):
            p, c = tokenize_exchange(tokenizer, instruction, pair[side][0]["content"])
            assert p + c == row["prompt_ids"] + row[f"{side}_ids"]
            assert row["prompt_ids"] == p[: len(row["prompt_ids"])]


@pytest.mark.parametrize("response", ["Hello!", "\n\nHello", "  x", " leading space", "Línea\ncon ñ", ""])
def test_tokenize_exchange_reproduces_trl_rule(tokenizer, response):
    """TRL's rule: the completion starts where apply_chat_template(prompt, add_generation_prompt=True)
    and apply_chat_template(prompt + answer) diverge."""
    msgs = [{"role": "user", "content": "Say something."}]
    prompt = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=True)[
        "input_ids"
    ]
    full = tokenizer.apply_chat_template(
        msgs + [{"role": "assistant", "content": response}], tokenize=True, return_dict=True
    )["input_ids"]
    cut = common_prefix_length(list(prompt), list(full))
    p, c = tokenize_exchange(tokenizer, "Say something.", response)
    assert p == list(prompt)[:cut] and c == list(full)[cut:]
    assert c[-2:] == tokenizer.encode("<|im_end|>\n")  # the end-of-turn is part of the completion
    assert p == prompt_ids(tokenizer, "Say something.")[: len(p)]


def _trl_ref_logps(trainer, rows, max_length):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collator = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id, max_length=max_length)
    batch = collator(rows)
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    return chosen.tolist(), rejected.tolist()


@pytest.mark.parametrize("truncate", [False, True])
def test_reference_logps_match_trl_compute_ref_log_probs(tiny_ref_lm, trl_trainer, truncate):
    """Score exactly what training optimises: our reference log-probs equal TRL's own, on TRL's
    collated batch (right padding, keep_start truncation at max_length)."""
    rows = trl_rows(trl_trainer, range(len(PAIRS)))
    max_length = max(len(r["prompt_ids"]) for r in rows) + 3 if truncate else 256
    assert all(len(r["prompt_ids"]) < max_length for r in rows)
    if truncate:  # the short limit really truncates completions
        cut = [
            len(r["prompt_ids"]) + len(r[side]) > max_length for r in rows for side in ("chosen_ids", "rejected_ids")
        ]
        assert sum(cut) >= 3
    want_c, want_r = _trl_ref_logps(trl_trainer, rows, max_length)
    ours = pair_logps(tiny_ref_lm, PAIRS, max_length, BUDGET)
    for k in range(len(PAIRS)):
        assert ours[k].chosen == pytest.approx(want_c[k], abs=1e-2)
        assert ours[k].rejected == pytest.approx(want_r[k], abs=1e-2)


def test_reference_logps_match_trl_when_prompt_tokenization_diverges(tiny_ref_lm, trl_trainer):
    """A response starting with blank lines merges with the template's last '\\n': TRL cuts the
    prompt of *both* sides there and scores the '\\n' as part of the other side's completion."""
    rows = trl_rows(trl_trainer, range(len(PAIRS), len(PAIRS) + len(DIVERGING_PAIRS)))
    want_c, want_r = _trl_ref_logps(trl_trainer, rows, 256)
    ours = pair_logps(tiny_ref_lm, DIVERGING_PAIRS, 256, BUDGET)
    for k in range(len(DIVERGING_PAIRS)):
        assert ours[k].chosen == pytest.approx(want_c[k], abs=1e-2)
        assert ours[k].rejected == pytest.approx(want_r[k], abs=1e-2)


def test_pair_tokens_reads_the_whole_conversation_as_trl_does(tokenizer, trl_trainer, tiny_ref_lm):
    """The one pair tokenization: a system turn in the prompt is rendered (not only the last
    message), and string fields read as one message, both as TRL's own dataset rows have them."""
    row = trl_rows(trl_trainer, [len(PAIRS) + len(DIVERGING_PAIRS)])[0]
    prompt, chosen, rejected, starts = pair_tokens(tokenizer, SYSTEM_PAIR, 256)
    assert (prompt, chosen, rejected, starts) == (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"], (0, 0))
    assert "Answer in one line." in tokenizer.decode(prompt)
    plain = conv("Hi there", "Hello!", "Go away, please")
    strings = {k: v[0]["content"] for k, v in plain.items()}
    assert pair_tokens(tokenizer, strings, 256) == pair_tokens(tokenizer, plain, 256)
    want_c, want_r = _trl_ref_logps(trl_trainer, [row], 256)
    ours = pair_logps(tiny_ref_lm, [SYSTEM_PAIR], 256, BUDGET)[0]
    assert ours.chosen == pytest.approx(want_c[0], abs=1e-2)
    assert ours.rejected == pytest.approx(want_r[0], abs=1e-2)


def test_cached_reference_logps_are_read_back_as_computed(tiny_ref_lm, tmp_path):
    """The second call reads the cache: the same values, keyed by the pairs file's content."""
    from icr.config import TrainConfig
    from icr.core.io import write_jsonl_atomic
    from icr.training.reference_logps import cached_reference_logps

    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs_file, PAIRS)
    config = TrainConfig(max_length=256)
    first = cached_reference_logps(tiny_ref_lm, pairs_file, PAIRS, config, tmp_path / "cache", BUDGET)
    (cache,) = (tmp_path / "cache").iterdir()
    assert set(json.loads(cache.read_text())[0]) == {"ref_chosen_logps", "ref_rejected_logps", "chosen_nll"}
    again = cached_reference_logps(tiny_ref_lm, pairs_file, [], config, tmp_path / "cache", BUDGET)
    assert again == first and len(first) == len(PAIRS)
    assert first == pair_logps(tiny_ref_lm, PAIRS, 256, BUDGET, per_token_nll=True)
