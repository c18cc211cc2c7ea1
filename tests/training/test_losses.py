"""The DPO + NLL terms (`icr.training.losses`) against hand computations on fixed log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from icr.training.losses import (
    PairLogps,
    chosen_nll,
    completion_logps,
    dpo_margins,
    dpo_summary,
    reference_columns,
    sigmoid_dpo_loss,
)


def test_chosen_nll_both_normalizations_match_a_hand_computation():
    """Two chosen responses of 1 and 3 tokens (rows 0-1) and their rejected halves (rows 2-3), in
    TRL's layout (log-probs per predicted position, mask shifted by one)."""
    log_probs = torch.tensor(
        [
            [0.0, -2.0, 0.0, 0.0],  # chosen 0: one token, log p = −2
            [0.0, -1.0, -3.0, -5.0],  # chosen 1: three tokens, log p = −1, −3, −5
            [0.0, -7.0, 0.0, 0.0],  # rejected: never counted
            [0.0, -7.0, -7.0, 0.0],
        ]
    )
    mask = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0]])
    # TRL's sft term: every chosen token of the batch weighs the same: (2 + 1 + 3 + 5) / 4
    assert float(chosen_nll(log_probs, mask, "batch_tokens")) == pytest.approx(11 / 4)
    # LLaMA-Factory's pref_ftx: per-response token means (2 and 3), then their mean
    assert float(chosen_nll(log_probs, mask, "sequence_mean")) == pytest.approx((2 + 3) / 2)


def test_completion_logps_sums_each_half_of_trls_layout():
    log_probs = torch.tensor([[0.0, -2.0, 0.0], [0.0, -1.0, -3.0], [0.0, -4.0, 0.0], [0.0, -0.5, -0.5]])
    mask = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 1]])
    chosen, rejected = completion_logps(log_probs, mask)
    assert chosen.tolist() == [-2.0, -4.0] and rejected.tolist() == [-4.0, -1.0]


def test_dpo_summary_is_the_sigmoid_dpo_loss_of_the_beta_scaled_margins():
    policy = [PairLogps(-10.0, -20.0, 1.5), PairLogps(-12.0, -11.0, 2.5)]
    reference = [PairLogps(-11.0, -18.0), PairLogps(-12.0, -12.0)]
    # margins: 0.1·((−10+11) − (−20+18)) = 0.3 and 0.1·((−12+12) − (−11+12)) = −0.1
    out = dpo_summary(policy, reference, beta=0.1)
    want = [0.3, -0.1]
    assert out["reward_margin"] == pytest.approx(sum(want) / 2, abs=1e-6)
    assert out["reward_accuracy"] == pytest.approx(0.5)
    assert out["dpo_loss"] == pytest.approx(sum(math.log1p(math.exp(-m)) for m in want) / 2, abs=1e-6)
    assert out["nll_loss"] == pytest.approx(2.0)


def test_a_model_against_itself_has_zero_margin_and_loss_log_2():
    same = [PairLogps(-3.0, -4.0, 0.7)] * 3
    out = dpo_summary(same, same, beta=0.5)
    assert out["reward_margin"] == 0.0 and out["reward_accuracy"] == 0.0
    assert out["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_margins_and_loss_are_tensorwise_and_reference_columns_use_trls_names():
    m = dpo_margins(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 2.0)
    assert m.tolist() == [pytest.approx(4.0)]
    assert float(sigmoid_dpo_loss(m)) == pytest.approx(math.log1p(math.exp(-4.0)), abs=1e-6)
    assert reference_columns(PairLogps(-1.0, -2.0)) == {"ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0}
