"""Training engine: preference transfer with DPO + NLL on the chosen response (paper §3.3).

    loss = −log σ(β·[(log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))])
           + λ · NLL(y_c | x)      (train.nll_normalization: a token mean over the batch, TRL's sft term,
                                     or LLaMA-Factory's mean of per-response token means)

TRL's DPOTrainer does the optimisation (`loss_type=["sigmoid", "sft"]`, `loss_weights=[1, λ]`).
The policy starts from the current model, which is also the reference. Reference log-probs are
computed once, before training, on exactly the tokens TRL trains on, cached, and spot-checked
against TRL's own reference forward (`icr.training.reference_logps`); under ZeRO-3/FSDP, where no
process holds the whole policy, TRL runs the reference alongside it (`icr.training.sharding`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from icr.config import TrainConfig
from icr.core.chat import pair_tokens
from icr.core.distributed import current_shard
from icr.core.errors import ConfigError, DataError
from icr.core.faults import OutOfMemory, TrainingOutOfMemory, divergence_guard
from icr.core.io import read_jsonl, write_json_atomic
from icr.core.models import LoadedModel
from icr.core.oom import free_accelerator_memory, out_of_memory_errors
from icr.training.checkpoints import checkpoint_callback, inputs_key
from icr.training.checkpoints import prepare as prepare_checkpoints
from icr.training.losses import PairLogps, dpo_summary, reference_columns
from icr.training.reference_logps import cached_reference_logps, pair_logps, spot_check
from icr.training.registry import TrainingJob, fresh_scratch, promoting
from icr.training.sharding import load_under_plan, reference_alongside, sharded_at_load

log = logging.getLogger(__name__)


def pair_length(tokenizer, pair: dict, config: TrainConfig) -> int:
    """Token slots the pair's longer sequence takes in a batch (what length grouping sorts by)."""
    prompt, chosen, rejected, _ = pair_tokens(tokenizer, pair, config.max_length)
    return len(prompt) + max(len(chosen), len(rejected))


def preference_dataset(tokenizer, pairs: list[dict], ref: list[PairLogps] | None, config: TrainConfig):
    """TRL's preference columns (prompt, chosen, rejected, and ref_*_logps when precomputed here:
    `ref` None leaves them to TRL) plus the `length` that transformers' length-grouped sampler reads."""
    from datasets import Dataset

    rows = []
    for i, pair in enumerate(pairs):
        row = {k: pair[k] for k in ("prompt", "chosen", "rejected")}
        if config.precompute_ref and ref is not None:
            row.update(reference_columns(ref[i]))
        rows.append({**row, "length": pair_length(tokenizer, pair, config)})
    return Dataset.from_list(rows)


def usable_pairs(tokenizer, pairs: list[dict], max_length: int) -> list[dict]:
    """Pairs TRL keeps: those whose prompt alone is shorter than max_length (it drops the others)."""
    kept = [p for p in pairs if len(pair_tokens(tokenizer, p, max_length)[0]) < max_length]
    if len(kept) < len(pairs):
        log.warning("%d pairs dropped: prompt alone reaches train.max_length=%d", len(pairs) - len(kept), max_length)
    return kept


def compact_trl_lm_head_on_cpu() -> None:
    """Make TRL's fused LM head project only the positions that carry a label, on CPU too.

    Replaces `trl.trainer.utils._use_triton`, a private function of TRL 1.16.0 (the version
    pyproject.toml pins): check it on any TRL upgrade.

    TRL compacts to the labelled positions on Triton devices and projects every position
    elsewhere (fixed tile shapes for compilers such as Neuron's). On CPU that sends the prompt and
    the padding through the vocabulary projection as well: in our benchmark's step (8 pairs,
    max_length 256) 4,080 positions instead of 760, a third of the step's time. The log-probs
    are the same either way (unlabelled positions are zero); `test_training` checks it."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or getattr(original, "icr_compact_on_cpu", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    compact.icr_compact_on_cpu = True
    trl_utils._use_triton = compact


def _make_trainer_class():
    from trl import DPOTrainer

    from icr.training.checkpoints import ResumableOrderMixin
    from icr.training.tracking import LossTermsMixin

    compact_trl_lm_head_on_cpu()

    class ICRDPOTrainer(ResumableOrderMixin, LossTermsMixin, DPOTrainer):
        """DPOTrainer that uses reference log-probs already present in the dataset, logs the DPO
        and NLL terms of its loss separately (`icr.training.tracking`) and resumes a killed training
        exactly (`icr.training.checkpoints`)."""

        def _precompute_ref_logps(self, dataset, name, batch_size):
            # overrides a private method of TRL 1.16 (the lower bound in pyproject.toml): check on upgrade
            if "ref_chosen_logps" in dataset.column_names:
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    return ICRDPOTrainer


def gradient_accumulation(config: TrainConfig, processes: int) -> int:
    """Accumulation steps per optimizer step. With `global_batch_size` G set: G / (batch_size × P)
    for P processes, so the global batch is G whatever the launch; otherwise `grad_accum` (the
    global batch is then batch_size × grad_accum × P)."""
    if config.global_batch_size is None:
        return config.grad_accum
    per_pass = config.batch_size * processes
    if config.global_batch_size % per_pass:
        raise ConfigError(
            f"train.global_batch_size={config.global_batch_size} is not divisible by train.batch_size × processes "
            f"= {config.batch_size} × {processes} = {per_pass}: change batch_size or the number of processes"
        )
    return config.global_batch_size // per_pass


def dpo_config(config: TrainConfig, output_dir: str, processes: int = 1, run_name: str | None = None):
    from trl import DPOConfig

    use_cpu = not torch.cuda.is_available()
    # TRL's `sft` term is the batch-token mean; a sequence-mean NLL is added by the trainer instead
    trl_nll = config.nll_weight > 0 and config.nll_normalization == "batch_tokens"
    return DPOConfig(
        output_dir=output_dir,
        beta=config.beta,
        loss_type=["sigmoid", "sft"] if trl_nll else ["sigmoid"],
        loss_weights=[1.0, config.nll_weight] if trl_nll else None,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float < 1 is a share of the steps
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=gradient_accumulation(config, processes),
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        precompute_ref_log_probs=config.precompute_ref,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        **({"gradient_checkpointing": True} if config.gradient_checkpointing else {}),
        bf16=not use_cpu and torch.cuda.is_bf16_supported(),
        use_cpu=use_cpu,
        logging_steps=1,
        logging_nan_inf_filter=False,  # transformers would log a NaN/inf loss as the mean of the earlier ones
        # by steps here; by time through `icr.training.checkpoints.checkpoint_callback`
        save_strategy="steps" if config.save_steps else "no",
        **({"save_steps": config.save_steps} if config.save_steps else {}),
        save_total_limit=config.keep_checkpoints,
        report_to=config.report_to,
        run_name=run_name,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,  # `icr.core.progress` reports the steps (a bar on a terminal, log lines otherwise)
        **config.trl_args,
    )


def dpo_trainer(
    lm: LoadedModel,
    dataset,
    config: TrainConfig,
    output_dir: str,
    run_name: str | None = None,
    tracking_dir: Path | None = None,
    pair_stats: dict | None = None,
    callbacks: tuple = (),
    args=None,
):
    """Our DPOTrainer on `dataset` (see `preference_dataset`) with `config`'s arguments and LoRA;
    tracker logs (`train.report_to`) under `tracking_dir` as `run_name`, with `pair_stats` logged at
    step 0 (`icr.training.tracking`); progress through `icr.core.progress`; `callbacks`: extra
    transformers callbacks; `args`: the `dpo_config` the model was loaded under, if made already."""
    from transformers import PrinterCallback

    from icr.core.progress import trainer_callback
    from icr.training.tracking import pair_statistics_callback, tensorboard_dir

    args = args or dpo_config(config, output_dir, current_shard().world, run_name)
    with tensorboard_dir(tracking_dir):
        trainer = _make_trainer_class()(
            model=lm.model, args=args, train_dataset=dataset, processing_class=lm.tokenizer, peft_config=_lora(config)
        )
    if config.nll_normalization == "sequence_mean":
        trainer.sequence_nll_weight = config.nll_weight
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the step progress replaces it
    for callback in (trainer_callback(), pair_statistics_callback(trainer, pair_stats), *callbacks):
        trainer.add_callback(callback)
    return trainer


def _lora(config: TrainConfig):
    if not config.lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    lora = config.lora
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def train_dpo(job: TrainingJob) -> dict:
    """Train π^{t+1} from π^t (= reference) on a pairs file; save a model folder at `job.out_dir`.

    The folder appears complete or not at all (written beside it, then renamed). Metrics go to
    `out_dir/train_metrics.json`: TRL's log history plus the DPO and NLL terms before and after."""
    config, world = job.config, current_shard().world
    args, lm, pairs = planned_model_and_pairs(
        job, lambda: dpo_config(config, str(job.checkpoint_dir), processes=world, run_name=job.run_name)
    )
    log.info("training %s on %d pairs (%s)", job.model_spec, len(pairs), job.pairs_file)
    fresh_scratch(job)
    resume = prepare_checkpoints(job.checkpoint_dir, inputs_key(job.pairs_file, job.model_spec, config, world))
    ref = None
    if sharded_at_load(lm.model):
        reference_alongside(args)
    else:
        with training_memory(config):
            ref = cached_reference_logps(
                lm, job.pairs_file, pairs, config, job.out_dir.parent / "cache", job.token_budget
            )
    dataset = preference_dataset(lm.tokenizer, pairs, ref, config)
    lm.model.train()
    callbacks = (checkpoint_callback(config), *job.callbacks)
    with training_memory(config):
        trainer = dpo_trainer(
            lm,
            dataset,
            config,
            str(job.checkpoint_dir),
            job.run_name,
            job.tracking_dir,
            job.pair_stats,
            callbacks,
            args,
        )
    # a NaN/inf or exploding loss stops training: nothing below runs, no model is promoted
    trainer.add_callback(divergence_guard(config.max_loss_ratio, f"{job.out_dir} (from {job.model_spec})"))
    with training_memory(config):
        if ref is not None and config.precompute_ref:
            spot_check(trainer, trainer.train_dataset)
        if resume is not None:
            trainer.resume_from = resume
            log.info("resumed at step %s from %s", resume.name.rpartition("-")[2], resume)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    with promoting(job) as model_dir:
        return _save_and_measure(trainer, result, lm, pairs, ref, config, job.token_budget, model_dir)


def planned_model_and_pairs(
    job: TrainingJob, training_arguments: Callable[[], Any]
) -> tuple[Any, LoadedModel, list[dict]]:
    """The training arguments, the model to train loaded under their plan (`icr.training.sharding`)
    and the file's pairs that TRL keeps (`usable_pairs`). An empty pairs file or an indivisible
    global batch fails before any weights load."""
    pairs = read_jsonl(job.pairs_file)
    if not pairs:
        raise DataError(f"{job.pairs_file}: no preference pairs to train on")
    gradient_accumulation(job.config, current_shard().world)  # an indivisible global batch fails before loading
    args, lm = load_under_plan(job, training_arguments)
    return args, lm, usable_pairs(lm.tokenizer, pairs, job.config.max_length)


@contextmanager
def training_memory(config: TrainConfig):
    """Out of memory in training (or in its reference log-probs): a `TrainingOutOfMemory` naming the
    settings to lower, after freeing the memory."""
    advice = (
        f"training ran out of memory; no model was saved. Lower one of: train.batch_size (now "
        f"{config.batch_size}; raise train.grad_accum, now {config.grad_accum}, to keep the effective "
        f"batch), train.max_length (now {config.max_length}), or set train.gradient_checkpointing: true "
        "or train.lora.enabled: true; then run the same command again: the run resumes at this training stage"
    )
    try:
        yield
    except OutOfMemory as err:
        raise TrainingOutOfMemory(f"{err}; {advice}") from err
    except out_of_memory_errors() as err:
        message = str(err).split("\n")[0]
    else:
        return
    free_accelerator_memory()  # out of the except block: the traceback no longer pins the tensors
    raise TrainingOutOfMemory(f"{advice} ({message})")


def _save_and_measure(
    trainer,
    result,
    lm: LoadedModel,
    pairs: list[dict],
    ref: list[PairLogps] | None,
    config: TrainConfig,
    token_budget: int | str,
    folder: Path,
) -> dict:
    """Save the trained model to `folder` with its train_metrics.json: TRL's log history and the DPO
    and NLL terms before (the policy starts as the reference) and after training."""
    shard = current_shard()
    model = _save_trained(trainer, config, folder, lm.tokenizer, shard)
    metrics = {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "before": dpo_summary(ref, ref, config.beta) if ref is not None else None,
        "after": None,
    }
    if not shard.is_main:
        return metrics
    # weights whole in this process (always so when the reference was scored before training)
    if model is not None and ref is not None:
        model.eval()
        trained = LoadedModel(model=model, tokenizer=lm.tokenizer, spec=str(folder), path=str(folder))
        metrics["after"] = dpo_summary(
            pair_logps(trained, pairs, config.max_length, token_budget, per_token_nll=True), ref, config.beta
        )
    metrics.update(
        {
            "train_runtime_s": result.metrics.get("train_runtime"),
            "log_history": trainer.state.log_history,
            "loss_definition": "sigmoid DPO + nll_weight * token-mean NLL of the chosen response",
            "config": config.model_dump(),
            "processes": shard.world,
            "global_batch": config.batch_size * gradient_accumulation(config, shard.world) * shard.world,
        }
    )
    write_json_atomic(folder / "train_metrics.json", _finite(metrics))
    return metrics


def _save_trained(trainer, config: TrainConfig, folder: Path, tokenizer, shard):
    """Write the trained model (LoRA merged unless `lora.merge` is false) as a safetensors model
    folder. Returns the model when its weights are whole in this process (None under ZeRO-3/FSDP,
    whose shards `trainer.save_model` gathers from every process)."""
    sharded = bool(getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))
    if config.lora.enabled and config.lora.merge:
        if sharded:
            raise ValueError(
                "train.lora.merge under DeepSpeed ZeRO-3 or FSDP is not supported: set "
                "train.lora.merge: false and merge the saved adapter afterwards"
            )
        model = trainer.model.merge_and_unload()
        if shard.is_main:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        return model
    trainer.save_model(str(folder))  # every process takes part; the main one writes
    if shard.is_main:
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle: nothing a model folder needs
    return None if sharded else trainer.model


def _finite(obj):
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
