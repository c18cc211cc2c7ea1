"""Experiment tracking: what training sends to TensorBoard, wandb, trackio, ... (`train.report_to`).

Per optimizer step, beside TRL's own metrics (`loss`, `rewards/margins`, `rewards/accuracies`, ...):

    dpo_loss = mean −log σ(β·[(log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))])
    nll_loss = token-mean −log π(y_c|x)                 so that  loss = dpo_loss + λ·nll_loss

computed by `icr.training.losses` from the log-probabilities of the step's own forward pass (no
extra forward). Once per
iteration, at step 0, the pair statistics of each language (`pairs/<lang>/<statistic>`, from
`pairs_stats.json`). The tracker logs of iteration t go to `<run>/tracking/iter_<t>`, the tracked
run is named `<run_name>/iter_<t>`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from icr.training.losses import chosen_nll, completion_logps, dpo_margins, sigmoid_dpo_loss

PAIR_STATISTICS = (
    "prompts",
    "pairs",
    "alpha",
    "mean_len_chosen",
    "mean_len_rejected",
    "mean_margin",
    "target_language_share",
)


def tracked_run_name(run_name: str | None, default: str, iteration: int | None) -> str:
    base = run_name or default
    return base if iteration is None else f"{base}/iter_{iteration}"


@contextlib.contextmanager
def tensorboard_dir(folder: Path | None) -> Iterator[None]:
    """Point transformers' TensorBoard callback at `folder` while a trainer is built (it reads
    TENSORBOARD_LOGGING_DIR then; its default is inside the trainer's scratch folder, which is deleted)."""
    if folder is None:
        yield
        return
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


def pair_statistics_logs(stats: dict[str, dict]) -> dict[str, float]:
    """Flat scalars `pairs/<lang>/<statistic>` and `pairs/<lang>/dropped/<reason>` of one iteration."""
    logs = {}
    for lang, s in stats.items():
        for key in PAIR_STATISTICS:
            value = s.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):  # NaN (no pairs) is not a point
                logs[f"pairs/{lang}/{key}"] = float(value)
        for reason, count in (s.get("dropped") or {}).items():
            logs[f"pairs/{lang}/dropped/{reason}"] = float(count)
    return logs


class LossTermsMixin:
    """Mixed into TRL's DPOTrainer: records `dpo_loss` and `nll_loss` of every micro-batch beside
    TRL's metrics (TRL logs only their weighted sum). The log-probs come from the policy's forward
    in `compute_loss`, caught by a hook; the reference's from the precomputed columns or, without
    them, from the reference forward that follows."""

    # λ of a sequence-mean NLL term added here (train.nll_normalization: sequence_mean); TRL's own
    # `sft` term is off then. 0: TRL's loss as it is.
    sequence_nll_weight: float = 0.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs: list = []
        modules = [model] + ([self.ref_model] if getattr(self, "ref_model", None) is not None else [])
        hooks = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for m in modules]
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            for hook in hooks:
                hook.remove()
        if not outputs or getattr(outputs[0], "log_probs", None) is None:
            return result
        self._record_terms(outputs, inputs)
        if self.sequence_nll_weight:
            nll = self.sequence_nll_weight * chosen_nll(
                outputs[0].log_probs, inputs["completion_mask"], "sequence_mean"
            )
            result = (result[0] + nll, *result[1:]) if return_outputs else result + nll
        return result

    @torch.no_grad()
    def _record_terms(self, outputs: list, inputs: dict) -> None:
        mask = inputs["completion_mask"]
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif len(outputs) > 1:
            ref_chosen, ref_rejected = completion_logps(outputs[1].log_probs, mask)
        else:
            return
        log_probs = outputs[0].log_probs.detach()
        policy_chosen, policy_rejected = completion_logps(log_probs, mask)
        dpo = sigmoid_dpo_loss(dpo_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.beta))
        nll = chosen_nll(log_probs, mask, "sequence_mean" if self.sequence_nll_weight else "batch_tokens")
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dpo_loss"].append(self.accelerator.gather_for_metrics(dpo).mean().item())
        self._metrics[mode]["nll_loss"].append(self.accelerator.gather_for_metrics(nll).mean().item())


def pair_statistics_callback(trainer, stats: dict[str, dict] | None):
    """A callback that logs an iteration's pair statistics once, when training begins."""
    from transformers import TrainerCallback

    class PairStatistics(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if stats:
                trainer.log(pair_statistics_logs(stats))

    return PairStatistics()
