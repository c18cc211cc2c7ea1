"""The DPO + NLL objective (paper §3.3) as pure functions, shared by the trainer's before/after
summary and the per-micro-batch tracking, so both report the same terms.

    margin = β·[(log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))]
    DPO    = −log σ(margin)
    NLL    = −log π(y_c|x), normalised per `chosen_nll`

Sequence log-probs are kept in `PairLogps` records whatever model they come from: the trained
policy's and the reference's are the same kind of value. TRL's column names (`ref_chosen_logps`)
name only a reference's values: a TRL dataset column and the reference cache (`reference_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PairLogps:
    """Summed log-probs of a pair's chosen and rejected completion under one model, and the
    token-mean NLL of the chosen one (NaN when not measured)."""

    chosen: float
    rejected: float
    chosen_nll: float = float("nan")


def reference_columns(ref: PairLogps) -> dict:
    """TRL's precomputed-reference columns of one pair."""
    return {"ref_chosen_logps": ref.chosen, "ref_rejected_logps": ref.rejected}


def dpo_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """β·[(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))] per pair, on floats or
    tensors alike."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def sigmoid_dpo_loss(margins: torch.Tensor) -> torch.Tensor:
    """−log σ(margin) per pair (TRL's `sigmoid` loss)."""
    return -F.logsigmoid(margins)


def completion_logps(log_probs: torch.Tensor, completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of the chosen and rejected halves of a [chosen; rejected] batch
    of per-position log-probs (TRL's layout: positions shifted by one against the mask). Summed
    unmasked, as TRL sums them: its labels are −100 outside the completion, whose log-probs are 0."""
    mask = completion_mask[..., 1:]
    return log_probs[:, -mask.size(1) :].sum(dim=1).chunk(2, dim=0)


def chosen_nll(log_probs: torch.Tensor, completion_mask: torch.Tensor, normalization: str = "batch_tokens"):
    """NLL of the chosen halves of a [chosen; rejected] batch (TRL's layout: positions shifted by one).

    batch_tokens   −Σ_i Σ_t log p_it / Σ_i n_i      (TRL's `sft` loss term)
    sequence_mean  −(1/B) Σ_i (Σ_t log p_it / n_i)  (LLaMA-Factory's pref_ftx: −policy_chosen_logps_avg,
                                                      then the batch mean; n_i ≥ 1)
    """
    mask = completion_mask[..., 1:]
    chosen_tokens, _ = log_probs[:, -mask.size(1) :].chunk(2, dim=0)
    chosen_mask, _ = mask.chunk(2, dim=0)
    if normalization == "sequence_mean":
        lengths = chosen_mask.sum(dim=1).clamp(min=1)
        return -((chosen_tokens * chosen_mask).sum(dim=1) / lengths).mean()
    return -chosen_tokens[chosen_mask.bool()].mean()


def dpo_summary(policy: list[PairLogps], reference: list[PairLogps], beta: float) -> dict:
    """Mean DPO term, mean chosen NLL (per-response token means) and the reward margin/accuracy of
    a policy against its reference on the same pairs. Kept apart from the combined loss: a large
    NLL weight can make the loss and the reward metrics look better than they are."""
    margins = torch.tensor(
        [dpo_margins(p.chosen, p.rejected, r.chosen, r.rejected, beta) for p, r in zip(policy, reference)]
    )
    return {
        "dpo_loss": float(sigmoid_dpo_loss(margins).mean()),
        "nll_loss": float(sum(p.chosen_nll for p in policy) / len(policy)),
        "reward_margin": float(margins.mean()),
        "reward_accuracy": float((margins > 0).float().mean()),
    }
