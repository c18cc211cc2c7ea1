"""Reference log-probs for DPO (paper §3.3): the tokens TRL trains on for a pair, the reference
model's log-probs on them, their cache, and a spot check against TRL's own reference forward.

They are computed once, before training, by our scorer on exactly the tokens TRL trains on (same
template, same end-of-turn, same `max_length` truncation) and stored keyed by the content they
depend on; the spot check refuses stale or misaligned values.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from icr.config import TrainConfig
from icr.core.chat import pair_tokens
from icr.core.distributed import Shard, current_shard
from icr.core.errors import IcrError
from icr.core.io import read_json, write_json_atomic
from icr.core.models import LoadedModel, fingerprint
from icr.engines.scoring.scorer import ScoreGroup, Scorer
from icr.training.losses import PairLogps, reference_columns

log = logging.getLogger(__name__)

REFERENCE_PAIRS_PER_PASS = 8  # pairs whose responses share the reference's forward passes


class StaleReferenceError(IcrError, RuntimeError):
    """Precomputed reference log-probs that disagree with the reference model."""


def pair_logps(
    lm: LoadedModel,
    pairs: list[dict],
    max_length: int,
    token_budget: int | str,
    per_token_nll: bool = False,
    shard: Shard = Shard(),
) -> list[PairLogps]:
    """Summed log-probs of each pair's chosen and rejected completion under `lm` (our scorer, TRL's
    tokens and truncation): the reference's before training, the policy's after it. With
    `per_token_nll`, also the token-mean NLL of the chosen response.

    The pairs go through the scorer in fixed chunks of `REFERENCE_PAIRS_PER_PASS`; with a `shard` of
    several processes each scores the chunks it owns and the values are gathered, so every process
    returns the same list as one process alone, bit for bit."""
    scorer = Scorer(lm.model, token_budget)
    chunks = [pairs[k : k + REFERENCE_PAIRS_PER_PASS] for k in range(0, len(pairs), REFERENCE_PAIRS_PER_PASS)]
    mine = {
        k: _chunk_logps(lm, scorer, chunk, max_length, per_token_nll) for k, chunk in enumerate(chunks) if shard.owns(k)
    }
    if shard.world > 1:
        log.info(
            "reference log-probs: process %d of %d scored %d of %d pairs",
            shard.rank, shard.world, sum(len(chunks[k]) for k in mine), len(pairs),
        )  # fmt: skip
        from accelerate.utils import gather_object

        mine = {k: v for part in gather_object([mine]) for k, v in part.items()}
    return [logps for k in range(len(chunks)) for logps in mine[k]]


def _chunk_logps(lm: LoadedModel, scorer: Scorer, chunk: list[dict], max_length: int, per_token_nll: bool):
    # Every token after the shared prompt counts, as in TRL's completion mask (which also covers
    # a prompt tail that merged with the response, see `icr.core.chat.pair_tokens`).
    tokens = [pair_tokens(lm.tokenizer, pair, max_length) for pair in chunk]
    groups = [ScoreGroup(prompt, [chosen, rejected]) for prompt, chosen, rejected, _ in tokens]
    out = []
    for chosen, rejected in scorer.score_groups(groups, per_token=True):
        nll = -sum(chosen) / max(len(chosen), 1) if per_token_nll else float("nan")
        out.append(PairLogps(float(sum(chosen)), float(sum(rejected)), nll))
    return out


def cached_reference_logps(
    reference: LoadedModel,
    pairs_file: Path,
    pairs: list[dict],
    config: TrainConfig,
    cache_dir: Path,
    token_budget: int | str,
) -> list[PairLogps]:
    """Reference log-probs keyed by (pairs content, reference model fingerprint, max_length)."""
    key = hashlib.sha256(
        pairs_file.read_bytes() + fingerprint(reference.path).encode() + f"{config.max_length}|nll".encode()
    ).hexdigest()[:20]
    cache = cache_dir / f"ref_logps-{key}.json"
    if cache.exists():
        return [PairLogps(r["ref_chosen_logps"], r["ref_rejected_logps"], r["chosen_nll"]) for r in read_json(cache)]
    shard = current_shard()  # each process scores its share once, not the whole set P times
    values = pair_logps(reference, pairs, config.max_length, token_budget, per_token_nll=True, shard=shard)
    if shard.is_main:
        write_json_atomic(cache, [{**reference_columns(v), "chosen_nll": v.chosen_nll} for v in values])
    shard.wait()
    return values


def spot_check(trainer, dataset, tolerance: float = 1e-2) -> None:
    """Refuse precomputed reference log-probs that disagree with TRL's own reference forward."""
    batch = trainer.data_collator([dataset[i] for i in range(min(2, len(dataset)))])
    batch = {k: v.to(trainer.model.device) if hasattr(v, "to") else v for k, v in batch.items()}
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    want = torch.cat([chosen, rejected]).float().cpu()
    have = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).float().cpu()
    gap = float((want - have).abs().max())
    if gap > tolerance + 1e-4 * float(want.abs().max()):
        raise StaleReferenceError(
            f"precomputed reference log-probs differ from the reference model by {gap:.4g} nats: stale or "
            "misaligned cache; delete it and train again"
        )
