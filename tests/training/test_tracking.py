"""Experiment tracking: `train.report_to` validated before any model loads, left out of the config
hash, and, offline with TensorBoard, event files holding the DPO and NLL terms, the reward margin
and accuracy per step and the iteration's pair statistics."""

from __future__ import annotations

import pytest

from helpers import TOKEN_BUDGET, train_config, write_train_pairs
from icr.config import ConfigError, load_config
from icr.core.io import read_json
from icr.training.registry import TrainingJob
from icr.training.trainer import train_dpo

PAIR_STATS = {
    "en": {
        "prompts": 4,
        "pairs": 3,
        "dropped": {"identical": 1},
        "alpha": 0.25,
        "mean_len_chosen": 12.0,
        "mean_len_rejected": 11.0,
        "mean_margin": 0.5,
        "target_language_share": 0.75,
    },
    "es": {
        "prompts": 4,
        "pairs": 0,
        "dropped": {"fewer_than_2_in_language": 4},
        "alpha": 0.0,
        "mean_len_chosen": float("nan"),
        "mean_len_rejected": float("nan"),
        "mean_margin": float("nan"),
        "target_language_share": 0.25,
    },
}


@pytest.mark.parametrize(
    "value,message",
    [
        ("tensorbord", "unknown tracker"),
        (["none", "tensorboard"], "cannot be combined"),
    ],
)
def test_bad_report_to_is_a_config_error_naming_the_field(value, message):
    with pytest.raises(ConfigError, match=rf"train.report_to: .*{message}"):
        load_config(overrides={"train.report_to": value})


def test_report_to_reads_a_comma_list_and_does_not_change_the_config_hash():
    plain = load_config()
    tracked = load_config(overrides={"train.report_to": "tensorboard", "train.run_name": "exp-7"})
    assert tracked.train.report_to == ["tensorboard"] and plain.train.report_to == ["none"]
    assert tracked.section_hash("train") == plain.section_hash("train")  # where logs go changes no result
    assert load_config(overrides={"train.beta": 0.2}).section_hash("train") != plain.section_hash("train")


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(folder.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {folder}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_loss_terms_reward_metrics_and_pair_statistics(tiny_dir, tmp_path):
    config = train_config(report_to=["tensorboard"], nll_weight=0.5, batch_size=1, epochs=1)
    tracking = tmp_path / "tracking" / "iter_0"
    metrics = train_dpo(
        TrainingJob(
            str(tiny_dir),
            write_train_pairs(tmp_path / "p.jsonl"),
            tmp_path / "model",
            config,
            TOKEN_BUDGET,
            "cpu",
            run_name="t/iter_0",
            tracking_dir=tracking,
            pair_stats=PAIR_STATS,
        )
    )
    scalars = _scalars(tracking)
    steps = metrics["steps"]
    for tag in ("train/dpo_loss", "train/nll_loss", "train/rewards/margins", "train/rewards/accuracies", "train/loss"):
        assert [s for s, _ in scalars[tag]] == list(range(1, steps + 1)), tag
    # the logged terms are the two parts of the loss TRL optimised: loss = DPO + λ·NLL at every step
    for (_, loss), (_, dpo), (_, nll) in zip(
        scalars["train/loss"], scalars["train/dpo_loss"], scalars["train/nll_loss"]
    ):
        assert loss == pytest.approx(dpo + 0.5 * nll, rel=1e-4, abs=1e-5)
    first_dpo = scalars["train/dpo_loss"][0][1]
    assert first_dpo == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: log 2
    assert scalars["train/pairs/en/pairs"] == [(0, 3.0)] and scalars["train/pairs/en/alpha"] == [(0, 0.25)]
    assert scalars["train/pairs/es/dropped/fewer_than_2_in_language"] == [(0, 4.0)]
    assert "train/pairs/es/mean_margin" not in scalars  # NaN (no pairs) is not plotted as a point
    history = read_json(tmp_path / "model" / "train_metrics.json")["log_history"]
    assert all("dpo_loss" in e and "nll_loss" in e for e in history if "loss" in e)


def test_sequence_mean_turns_off_trls_sft_term_and_adds_its_own(tiny_dir):
    """The trainer's loss under sequence_mean is TRL's DPO-only loss + λ·(LLaMA-Factory's NLL) on the
    same forward: the term is in the loss that is optimised, not only logged."""
    import torch

    from icr.config import TrainConfig
    from icr.core.models import load_model
    from icr.training.losses import PairLogps, chosen_nll
    from icr.training.trainer import dpo_config, dpo_trainer, preference_dataset

    config = TrainConfig(nll_normalization="sequence_mean", nll_weight=0.5, precompute_ref=False)
    assert dpo_config(config, "/tmp/unused").loss_type == ["sigmoid"]
    assert dpo_config(TrainConfig(nll_weight=0.5), "/tmp/unused").loss_type == ["sigmoid", "sft"]
    lm = load_model(str(tiny_dir), device="cpu", dtype="float32")
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"question {k}"}],
            "chosen": [{"role": "assistant", "content": "yes " * (k + 1)}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for k in range(2)
    ]
    trainer = dpo_trainer(
        lm, preference_dataset(lm.tokenizer, pairs, [PairLogps(0.0, 0.0)] * 2, config), config, "/tmp/icr-seqmean"
    )
    assert trainer.sequence_nll_weight == 0.5
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    seen = []
    hook = trainer.model.register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, batch))
        trainer.sequence_nll_weight = 0.0
        dpo_only = float(trainer.compute_loss(trainer.model, batch))
    hook.remove()
    nll = float(chosen_nll(seen[0].log_probs, batch["completion_mask"], "sequence_mean"))
    assert nll > 0
    assert loss == pytest.approx(dpo_only + 0.5 * nll, rel=1e-5)
