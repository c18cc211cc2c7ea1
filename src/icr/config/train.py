"""The training section (`train`, with its `lora` part): DPO + λ·NLL (paper §3.3) or KTO, as
`icr.training` runs them with TRL."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from icr.config.base import HASHED_WHEN_SET, NOT_HASHED, StrictModel


class LoraConfig(StrictModel):
    enabled: bool = Field(False, description="Train a LoRA adapter instead of all weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field("all-linear", description="Modules that get adapters.")
    merge: bool = Field(True, description="Merge the adapter into the saved model.")


def check_report_to(values: list[str]) -> list[str]:
    """`train.report_to` as transformers reads it; an unknown or uninstalled tracker is an error now,
    before any model loads, rather than after the reference log-probs are computed."""
    if values in ([], ["none"]):
        return ["none"]
    if "none" in values:
        raise ValueError("'none' cannot be combined with other trackers")
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    known = set(INTEGRATION_TO_CALLBACK) | {"all"}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(
            f"unknown tracker(s) {unknown}; transformers accepts: none, all, {', '.join(sorted(known - {'all'}))}"
        )
    installed = set(get_available_reporting_integrations())
    missing = [v for v in values if v != "all" and v not in installed]
    if missing:
        raise ValueError(f"tracker(s) {missing} not installed (pip install {' '.join(missing)})")
    return values


# DPOConfig fields that icr sets from its own settings: `train.trl_args` may not set them (the
# icr field to use instead, or why icr owns it). `icr.training.trainer.dpo_config` passes exactly these.
ICR_SET_DPO_ARGS = {
    "output_dir": "the run directory (checkpoints go under iter_<t>/model-checkpoints)",
    "beta": "train.beta",
    "loss_type": "train.nll_weight and train.nll_normalization",
    "loss_weights": "train.nll_weight",
    "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler",
    "warmup_steps": "train.warmup_ratio",
    "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum or train.global_batch_size",
    "max_length": "train.max_length",
    "seed": "train.seed",
    "data_seed": "train.seed",
    "precompute_ref_log_probs": "train.precompute_ref",
    "train_sampling_strategy": "train.group_by_length",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "bf16": "models.dtype (bf16 on a GPU that has it)",
    "use_cpu": "the device icr found (CPU when no GPU)",
    "logging_steps": "icr's progress and metrics (every step)",
    "logging_nan_inf_filter": "train.max_loss_ratio (icr's divergence guard must see every loss)",
    "save_strategy": "train.save_steps and train.save_minutes",
    "save_steps": "train.save_steps",
    "save_total_limit": "train.keep_checkpoints",
    "report_to": "train.report_to",
    "run_name": "train.run_name",
    "remove_unused_columns": "icr's reference log-prob columns (they must stay)",
    "dataloader_num_workers": "icr's data order (one process reads the pairs)",
    "disable_tqdm": "--progress",
}


def check_trl_args(args: dict[str, Any]) -> dict[str, Any]:
    """`train.trl_args` as DPOConfig fields: an unknown key is an error with the closest field, a
    key icr sets itself names the icr setting to use instead."""
    if not args:
        return args
    import dataclasses
    import difflib

    from trl import DPOConfig

    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    problems = []
    for key in args:
        if key in ICR_SET_DPO_ARGS:
            problems.append(f"{key!r} is set by icr: use {ICR_SET_DPO_ARGS[key]}")
        elif key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            problems.append(f"{key!r} is not a DPOConfig field" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if problems:
        raise ValueError("; ".join(problems))
    return args


class TrainConfig(StrictModel):
    loss: Literal["dpo", "kto"] = Field(
        "dpo",
        description="Preference loss: 'dpo' = DPO + λ·NLL(chosen) (the paper); 'kto' = TRL's KTO, each pair's "
        "chosen a desirable and its rejected an undesirable example, no NLL term (needs nll_weight: 0) "
        "(icr.training.kto).",
    )
    beta: float = Field(0.1, gt=0, description="DPO β (KTO's β under loss: kto).")
    nll_weight: float = Field(
        1.0, ge=0, description="λ of loss = DPO + λ·NLL(chosen), normalised by nll_normalization."
    )
    nll_normalization: Literal["batch_tokens", "sequence_mean"] = Field(
        "batch_tokens",
        description="How NLL(chosen) averages: 'batch_tokens' = TRL's sft term, the mean over every chosen token of "
        "the micro-batch; 'sequence_mean' = LLaMA-Factory's pref_ftx term (the paper's trainer), each chosen "
        "response's token-mean NLL, then the mean over the micro-batch.",
    )
    learning_rate: float = Field(5e-7, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming up.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    batch_size: int = Field(2, ge=1, description="Pairs per device per step.")
    grad_accum: int = Field(8, ge=1, description="Gradient accumulation steps (ignored when global_batch_size is set).")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Pairs per optimizer step over all processes; when set, gradient accumulation "
        "= global_batch_size / (batch_size × processes), and an indivisible combination is an error.",
    )
    max_length: int = Field(2048, ge=16, description="Max prompt+response tokens (longer: truncated at the end).")
    seed: int = Field(0, description="Training seed.")
    precompute_ref: bool = Field(
        True,
        description="Compute reference log-probs once before training. Under ZeRO-3/FSDP, which shard the "
        "weights at load, the reference runs alongside the policy instead, sharded like it.",
    )
    group_by_length: bool = Field(
        True, description="Pairs of similar length share a step (LengthGroupedSampler: random groups, sorted within)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models).")
    max_loss_ratio: float | None = Field(
        10.0,
        gt=1,
        description="Training stops as diverged, and no model is promoted, when a step's loss "
        "exceeds this multiple of the first step's loss (null: only a NaN or infinite loss stops it). Not "
        "hashed: a guard decides whether a training stops, never what a finished one produced.",
        json_schema_extra=NOT_HASHED,
    )
    report_to: list[str] = Field(
        ["none"],
        description="Experiment trackers TRL logs to: none, tensorboard, wandb, trackio, or any "
        "integration transformers accepts (several as a list). Logs go under <run>/tracking/iter_<t>.",
        json_schema_extra=NOT_HASHED,
    )
    run_name: str | None = Field(
        None,
        description="Name of the tracked run (wandb, trackio, ...); iteration t logs as <run_name>/iter_<t> "
        "(default: the run's `name`).",
        json_schema_extra=NOT_HASHED,
    )
    replay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Iteration t ≥ 1 also trains on ⌊replay × |pairs of iteration t−1|⌋ of the previous "
        "iteration's pairs, drawn without replacement by train.seed and t (icr.training.replay); "
        "null or iteration 0: only the iteration's own pairs.",
    )
    save_steps: int | None = Field(
        None,
        ge=1,
        description="Write a resumable checkpoint (weights, optimizer, scheduler, RNG) every N optimizer steps "
        "under iter_<t>/model-checkpoints; a restarted training resumes from the newest complete one "
        "(icr.training.checkpoints). null: by time only (save_minutes). Resuming gives the same model.",
        json_schema_extra=NOT_HASHED,
    )
    save_minutes: float | None = Field(
        30.0,
        gt=0,
        description="Also checkpoint when this many minutes have passed since the last checkpoint (null: never "
        "by time).",
        json_schema_extra=NOT_HASHED,
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        description="Newest checkpoints kept (older ones are deleted).",
        json_schema_extra=NOT_HASHED,
    )
    trl_args: dict[str, Any] = Field(
        {},
        description="Any other TRL DPOConfig / transformers TrainingArguments field, passed as given "
        "(e.g. {optim: adamw_torch_fused, max_grad_norm: 0.5, use_liger_kernel: true, padding_free: true}); "
        "checked against DPOConfig's fields before any model loads. Fields icr sets itself are refused "
        "with the icr setting to use.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @field_validator("trl_args")
    @classmethod
    def _known_trl_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_trl_args(value)

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        return check_report_to(value)

    @model_validator(mode="after")
    def _kto_has_no_nll(self) -> TrainConfig:
        if self.loss == "kto" and self.nll_weight > 0:
            raise ValueError("loss: kto has no NLL term (TRL's KTOTrainer): set nll_weight: 0")
        if self.loss == "kto" and self.trl_args:
            raise ValueError("trl_args are DPOConfig fields: they apply to loss: dpo only")
        return self

    @model_validator(mode="after")
    def _global_batch_divisible(self) -> TrainConfig:
        batch = self.global_batch_size
        if batch is not None and batch % self.batch_size:
            raise ValueError(f"global_batch_size={batch} is not a multiple of batch_size={self.batch_size}")
        return self
