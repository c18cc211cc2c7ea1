"""KTO training (`train.loss: kto`): the pairs as unpaired examples for TRL's KTOTrainer.

Each pair (x, y_c, y_r) becomes two examples: (x, y_c) desirable and (x, y_r) undesirable, so the
two classes are equally many and TRL's `desirable_weight` = `undesirable_weight` = 1 need no
correction (KTO paper, Ethayarajh et al. 2024, §3.2). TRL's loss, with z_ref the batch's KL
estimate from mismatched (cycled) completions:

    r(x, y) = log π(y|x) − log π_ref(y|x)
    loss    = mean over desirable of 1 − σ(β·(r − z_ref)) + mean over undesirable of 1 − σ(β·(z_ref − r))

KTOTrainer has no NLL term, so `train.nll_weight` must be 0 (a config error otherwise). With
`train.precompute_ref`, TRL computes the reference log-probs of the examples and of their KL
completions in one pass when the trainer is built (`KTOConfig.precompute_ref_log_probs`), and keeps
them in the `datasets` cache keyed by the dataset's fingerprint and the model's hash; icr's own
reference cache and spot check of DPO (`icr.training.reference_logps`) are not used. The values are
icr's scorer's on the same tokens (tests/training/test_kto.py). A train step sees 2 × `train.batch_size`
examples per device (TRL's KL estimate needs at least 2).
"""

from __future__ import annotations

import logging

import torch

from icr.config import TrainConfig
from icr.core.distributed import current_shard
from icr.core.faults import divergence_guard
from icr.core.io import write_json_atomic
from icr.training.registry import TrainingJob, fresh_scratch, promoting
from icr.training.trainer import (
    _finite,
    _lora,
    _save_trained,
    compact_trl_lm_head_on_cpu,
    gradient_accumulation,
    planned_model_and_pairs,
    training_memory,
)

log = logging.getLogger(__name__)


def kto_examples(pairs: list[dict]) -> list[dict]:
    """Per pair, in order: {prompt, completion: chosen, label: True}, {prompt, completion: rejected,
    label: False} (TRL's unpaired preference format, conversational as the pairs are)."""
    out = []
    for pair in pairs:
        out.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        out.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return out


def kto_config(config: TrainConfig, output_dir: str, processes: int = 1, run_name: str | None = None):
    from trl import KTOConfig

    use_cpu = not torch.cuda.is_available()
    return KTOConfig(
        output_dir=output_dir,
        beta=config.beta,
        desirable_weight=1.0,
        undesirable_weight=1.0,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float < 1 is a share of the steps
        num_train_epochs=config.epochs,
        per_device_train_batch_size=2 * config.batch_size,  # a pair's two examples
        gradient_accumulation_steps=gradient_accumulation(config, processes),
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        precompute_ref_log_probs=config.precompute_ref,
        **({"gradient_checkpointing": True} if config.gradient_checkpointing else {}),
        bf16=not use_cpu and torch.cuda.is_bf16_supported(),
        use_cpu=use_cpu,
        logging_steps=1,
        logging_nan_inf_filter=False,
        save_strategy="no",
        report_to=config.report_to,
        run_name=run_name,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def kto_trainer(lm, pairs: list[dict], config: TrainConfig, output_dir: str, run_name=None, callbacks=(), args=None):
    """TRL's KTOTrainer on the pairs' examples (`kto_examples`) with `config`'s arguments (`args`
    when made already, before the model loaded) and LoRA."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import KTOTrainer

    from icr.core.progress import trainer_callback

    compact_trl_lm_head_on_cpu()
    args = args or kto_config(config, output_dir, current_shard().world, run_name)
    trainer = KTOTrainer(
        model=lm.model,
        args=args,
        train_dataset=Dataset.from_list(kto_examples(pairs)),
        processing_class=lm.tokenizer,
        peft_config=_lora(config),
    )
    trainer.remove_callback(PrinterCallback)
    for callback in (trainer_callback(), *callbacks):
        trainer.add_callback(callback)
    return trainer


def train_kto(job: TrainingJob) -> dict:
    """`icr.training.trainer.train_dpo`'s contract with the KTO loss: π^{t+1} from π^t (= reference)
    saved at `job.out_dir` (complete or not at all), with `train_metrics.json` (TRL's log history).
    The job's `token_budget`, `tracking_dir` and `pair_stats` are not used."""
    config, shard = job.config, current_shard()
    work = job.scratch_dir
    args, lm, pairs = planned_model_and_pairs(
        job, lambda: kto_config(config, str(work / "trainer"), processes=shard.world, run_name=job.run_name)
    )
    fresh_scratch(job)
    lm.model.train()
    with training_memory(config):
        trainer = kto_trainer(lm, pairs, config, str(work / "trainer"), job.run_name, job.callbacks, args)
    trainer.add_callback(divergence_guard(config.max_loss_ratio, f"{job.out_dir} (from {job.model_spec})"))
    with training_memory(config):
        result = trainer.train()
    metrics = {"pairs": len(pairs), "examples": 2 * len(pairs), "steps": trainer.state.global_step, "after": None}
    with promoting(job) as model_dir:
        _save_trained(trainer, config, model_dir, lm.tokenizer, shard)
        if shard.is_main:
            metrics.update(
                {
                    "train_runtime_s": result.metrics.get("train_runtime"),
                    "log_history": trainer.state.log_history,
                    "loss_definition": "KTO (TRL KTOTrainer): chosen desirable, rejected undesirable",
                    "config": config.model_dump(),
                    "processes": shard.world,
                }
            )
            write_json_atomic(model_dir / "train_metrics.json", _finite(metrics))
    return metrics
