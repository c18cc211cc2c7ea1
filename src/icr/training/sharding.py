"""Loading the model to train under the launch's sharding plan (DeepSpeed ZeRO-3, FSDP).

transformers partitions the weights while it loads them (ZeRO-3's `zero.Init`) or reads them on
one process per node (FSDP's `cpu_ram_efficient_loading`, the others holding meta placeholders
until FSDP broadcasts them) only when the training arguments, which carry the plan, exist before
`from_pretrained`. Loaded first, every process would hold the whole model before the first step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from icr.core.errors import ConfigError
from icr.core.models import LoadedModel, load_model
from icr.training.registry import TrainingJob

log = logging.getLogger(__name__)


def load_under_plan(job: TrainingJob, training_arguments: Callable[[], Any]) -> tuple[Any, LoadedModel]:
    """The training arguments, then the model to train loaded under the plan they carry."""
    args = training_arguments()
    refuse_fsdp_without_gpus(args)
    lm = load_model(
        job.model_spec,
        device=job.device,
        dtype="float32" if job.device == "cpu" else "auto",
        trust_remote_code=job.trust_remote_code,
        allow_pickle=job.allow_pickle,
    )
    return args, lm


def sharded_at_load(model) -> bool:
    """Whether this process holds only part of the weights (ZeRO-3 partitions, or FSDP's meta
    placeholders on every process but the first of a node): then nothing can run the model until
    the trainer has wrapped it in the launch's engine."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or any(p.device.type == "meta" for p in model.parameters())


def refuse_fsdp_without_gpus(args) -> None:
    """accelerate applies FSDP to GPU processes only: a CPU launch would train as plain data
    parallelism, and transformers' `cpu_ram_efficient_loading` would still leave every process but
    the first with empty weights that nothing fills in."""
    from accelerate.utils import DistributedType, parse_flag_from_env

    fsdp_requested = parse_flag_from_env("ACCELERATE_USE_FSDP")
    on_cpu = args.distributed_state.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU)
    if fsdp_requested and on_cpu and not torch.cuda.is_available():
        raise ConfigError(
            "an FSDP launch on CPU: accelerate shards with FSDP on GPUs only, so this would train unsharded; "
            "launch without FSDP here (e.g. configs/accelerate/multi_gpu.yaml's --multi_gpu, which starts CPU "
            "processes too) or on GPU machines"
        )


def reference_alongside(args) -> None:
    """With the weights sharded at load, TRL keeps the reference as a second model sharded the same
    way (1/P of its weights per process) and runs it on every batch, as LLaMA-Factory's DPO does.

    Precomputed log-probs would need the policy to run before the trainer has wrapped it: no
    process holds its weights then. TRL's own precompute wraps the policy in a DeepSpeed inference
    engine that the training engine then wraps again, which fails in DeepSpeed 0.19's parameter
    coordinator ("pop from an empty deque"); the reference alongside trains to the same weights."""
    if args.precompute_ref_log_probs:
        log.info("weights sharded at load: the reference runs alongside the policy, sharded like it")
    args.precompute_ref_log_probs = False
