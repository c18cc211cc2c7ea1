"""Stage 4 (DPO + NLL with TRL) and the iterative loop on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import TOKEN_BUDGET, TRAIN_PAIRS, train_config, write_train_pairs
from icr.config import load_config
from icr.core.io import read_json, read_jsonl
from icr.core.models import load_model
from icr.training.losses import PairLogps
from icr.training.reference_logps import StaleReferenceError, pair_logps, spot_check
from icr.training.registry import TrainingJob
from icr.training.trainer import dpo_trainer, preference_dataset, train_dpo


def _trainer(lm, pairs_path, config, tmp_path):
    pairs = read_jsonl(pairs_path)
    dataset = preference_dataset(lm.tokenizer, pairs, pair_logps(lm, pairs, config.max_length, TOKEN_BUDGET), config)
    return dpo_trainer(lm, dataset, config, str(tmp_path / "t"))


def _batch_loss(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_training_step_lowers_dpo_loss_and_starts_at_log2(tiny_dir, tmp_path):
    lm = load_model(str(tiny_dir), device="cpu")
    trainer = _trainer(lm, write_train_pairs(tmp_path / "p.jsonl"), train_config(), tmp_path)
    start = _batch_loss(trainer)
    assert start == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    trainer.train()
    assert _batch_loss(trainer) < start - 1e-3


def test_length_grouping_batches_pairs_of_similar_length(tiny_dir, tmp_path):
    """32 short and 32 long pairs in random order, 2 pairs a step. Grouped by length
    (transformers' LengthGroupedSampler sorts groups of 16 here), nearly every step holds one kind
    and the epoch pads far fewer token slots than TRL's random order."""
    lm = load_model(str(tiny_dir), device="cpu")
    long = " ".join(["The answer needs many words to explain it well."] * 8)
    kinds = [i % 2 == 1 for i in range(64)]
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": long if is_long else "Yes."}],
            "rejected": [{"role": "assistant", "content": long + " More." if is_long else "No."}],
        }
        for i, is_long in enumerate(kinds)
    ]
    slots, mixed = {}, {}
    for grouped in (True, False):
        config = train_config(batch_size=2, max_length=256, group_by_length=grouped)
        ref = [PairLogps(0.0, 0.0)] * len(rows)
        trainer = dpo_trainer(lm, preference_dataset(lm.tokenizer, rows, ref, config), config, str(tmp_path / "t"))
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == 128  # chosen + rejected of 64 pairs
        slots[grouped] = sum(b["input_ids"].numel() for b in batches)
        lengths = [b["attention_mask"].sum(dim=1) for b in batches]
        mixed[grouped] = sum(int(x.max() - x.min() > 40) for x in lengths)
    assert mixed[True] <= 2 < mixed[False]  # a sorted group of 16 splits into steps of one kind
    assert slots[True] < 0.85 * slots[False]


def test_nll_weight_adds_lambda_times_token_mean_nll(tiny_dir, tmp_path):
    lm = load_model(str(tiny_dir), device="cpu")
    pairs_path = write_train_pairs(tmp_path / "p.jsonl")
    pairs = read_jsonl(pairs_path)
    nll = sum(r.chosen_nll for r in pair_logps(lm, pairs, 64, TOKEN_BUDGET, per_token_nll=True))
    # TRL's sft term is a token mean over the whole batch; recompute it that way.
    per_token = []
    from icr.core.chat import pair_tokens
    from icr.engines.scoring.scorer import ScoreGroup, score_groups

    for p in pairs:
        prompt, chosen, rejected, starts = pair_tokens(lm.tokenizer, p, 64)
        per_token += score_groups(lm.model, [ScoreGroup(prompt, [chosen])], per_token=True)[0][0]
    token_mean_nll = -sum(per_token) / len(per_token)
    assert nll > 0
    loss0 = _batch_loss(_trainer(lm, pairs_path, train_config(nll_weight=0.0), tmp_path))
    loss2 = _batch_loss(_trainer(lm, pairs_path, train_config(nll_weight=2.0), tmp_path))
    assert loss2 - loss0 == pytest.approx(2.0 * token_mean_nll, rel=1e-4)


def test_stale_reference_logps_are_refused(tiny_dir, tmp_path):
    lm = load_model(str(tiny_dir), device="cpu")
    trainer = _trainer(lm, write_train_pairs(tmp_path / "p.jsonl"), train_config(), tmp_path)
    spot_check(trainer, trainer.train_dataset)  # fresh values pass
    stale = trainer.train_dataset.map(lambda r: {"ref_chosen_logps": r["ref_chosen_logps"] - 3.0})
    with pytest.raises(StaleReferenceError):
        spot_check(trainer, stale)


@pytest.mark.parametrize("lora", [False, True])
def test_train_dpo_saves_a_loadable_model_with_metrics(tiny_dir, tmp_path, lora):
    pairs_path = write_train_pairs(tmp_path / "p.jsonl")
    out = tmp_path / "model"
    config = train_config(nll_weight=1.0, lora={"enabled": lora, "r": 4, "alpha": 8})
    metrics = train_dpo(TrainingJob(str(tiny_dir), pairs_path, out, config, TOKEN_BUDGET, device="cpu"))
    reloaded = load_model(str(out), device="cpu")
    assert reloaded.tokenizer.chat_template  # template travels with the model
    before = load_file(tiny_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert set(after) >= {k for k in before if "embed" not in k} - {"lm_head.weight"}
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed, "training changed no weight"
    saved = read_json(out / "train_metrics.json")
    assert saved["pairs"] == len(TRAIN_PAIRS) and saved["steps"] >= 1
    assert saved["before"]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert saved["after"]["dpo_loss"] < saved["before"]["dpo_loss"]
    assert metrics["after"]["reward_margin"] > 0
    assert not list(tmp_path.glob(".model.*")), "temporary folder left behind"


def test_config_errors_fail_before_any_model_loads(monkeypatch, tmp_path):
    import icr.core.models

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(icr.core.models, "load_model", boom)
    for override, field in [
        ({"reward.beta": 0}, "reward.beta"),
        ({"generate.n": 1}, "generate.n"),
        ({"train.beta": -1}, "train.beta"),
        ({"bogus": 1}, "bogus"),
    ]:
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            load_config(None, override)


def test_compacted_lm_head_on_cpu_gives_the_same_log_probs_and_gradients(tiny_dir, monkeypatch):
    """Our patch sends only labelled positions through TRL's fused head on CPU; TRL's own path
    projects every position. Both must give the same per-token log-probs and gradients."""
    import trl.trainer.utils as trl_utils
    from trl.kernels.chunked_logprob import _use_triton as trl_use_triton
    from trl.trainer.utils import add_fused_lm_head

    from icr.training.trainer import compact_trl_lm_head_on_cpu

    monkeypatch.setattr(trl_utils, "_use_triton", trl_use_triton)  # TRL as shipped (restored afterwards)
    lm = load_model(str(tiny_dir), device="cpu")
    add_fused_lm_head(lm.model, outputs=("log_probs", "entropy"))
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt
    labels[1, 9:] = -100  # padding

    def run():
        lm.model.zero_grad()
        out = lm.model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out.log_probs.detach(), lm.model.get_output_embeddings().weight.grad.clone()

    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL projects every position on CPU
    every_position = run()
    compact_trl_lm_head_on_cpu()
    assert trl_utils._use_triton(torch.device("cpu"))  # now only the labelled ones
    compacted = run()
    assert (every_position[0][labels[:, 1:] == -100] == 0).all()
    torch.testing.assert_close(compacted[0], every_position[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compacted[1], every_position[1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- global batch


@pytest.mark.parametrize("processes, accumulation", [(1, 16), (2, 8), (8, 2), (16, 1)])
def test_global_batch_size_fixes_the_batch_whatever_the_process_count(processes, accumulation, tmp_path):
    from icr.training.trainer import dpo_config, gradient_accumulation

    config = train_config(batch_size=2, grad_accum=5, global_batch_size=32)
    assert gradient_accumulation(config, processes) == accumulation
    args = dpo_config(config, str(tmp_path), processes)
    assert args.gradient_accumulation_steps * args.per_device_train_batch_size * processes == 32
    assert gradient_accumulation(train_config(batch_size=2, grad_accum=5), processes) == 5  # unset: grad_accum as given


@pytest.mark.parametrize("processes", [3, 32])
def test_indivisible_global_batch_is_a_clear_error(processes):
    from icr.config import ConfigError
    from icr.training.trainer import gradient_accumulation

    with pytest.raises(ConfigError, match=rf"global_batch_size=32 .* 2 × {processes}"):
        gradient_accumulation(train_config(batch_size=2, global_batch_size=32), processes)


def test_global_batch_not_a_multiple_of_batch_size_is_refused_by_the_config():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="global_batch_size=10 is not a multiple of batch_size=4"):
        train_config(batch_size=4, global_batch_size=10)


def test_indivisible_global_batch_fails_before_any_model_loads(tmp_path, monkeypatch):
    from icr.config import ConfigError
    from icr.core.distributed import Shard

    monkeypatch.setattr("icr.training.trainer.current_shard", lambda: Shard(0, 3))
    with pytest.raises(ConfigError, match="global_batch_size"):  # not a model-loading error
        train_dpo(
            TrainingJob(
                "no/such-model",
                write_train_pairs(tmp_path / "p.jsonl"),
                tmp_path / "out",
                train_config(batch_size=2, global_batch_size=32),
                TOKEN_BUDGET,
                device="cpu",
            )
        )
