"""The scorer: summed log-probabilities of many completions that share prompts.

    log π(y | x) = Σ_j log softmax(W h_j)[y_j]

computed so that it costs little more than the arithmetic it needs:

* each prompt x runs through the model once; its key/value cache serves every completion of that
  prompt (ICR scores N responses per prompt, and prompts are often longer than answers);
* the completions of many prompts are sorted by length and cut into sub-batches under a token
  budget, right-padded (causal attention keeps a real token from seeing the padding after it);
  a row carries its own prompt's cache, left-padded and masked to the sub-batch's longest prompt,
  in a cache allocated once at its final width (the completion's keys/values are written in place);
* on CPU, attention runs on the key/value heads as they are (grouped-query models), not on copies
  expanded to every query head;
* the output layer is applied only to the positions that are scored, by chunks (`icr.engines.scoring.head`):
  a full-vocabulary log-softmax over every position of a batch is never held in memory;
* what differs between a CPU and a GPU (output-layer strategy, prompts per prefill forward, shape
  bucketing, `token_budget: auto`) is a device profile, `icr.engines.scoring.device`; the log-probabilities
  of all sub-batches are read back from the device once, at the end;
* a prefill batch or a sub-batch that runs out of memory is split in halves and retried
  (`icr.core.oom.OomBackoff`), each part padded to the widths of the whole, so the numbers do not depend
  on the split (where the kernels do not depend on the number of rows).

`reference_logprobs` is the plain computation (one full forward per sequence, full log-softmax);
tests hold the scorer to it within 1e-4 per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from transformers.cache_utils import DynamicCache

from icr.core.models import LoadedModel
from icr.core.oom import OomBackoff
from icr.engines.scoring.cache import Prefix, batch_cache, plain_layers, repeated_cache, row_view
from icr.engines.scoring.device import ScoringProfile, profile_for, resolve_token_budget
from icr.engines.scoring.head import _logit_transform  # noqa: F401  (re-exported: part of the scorer's interface)

CACHE_BUDGET_FACTOR = 2  # rows × (cached prompt + completion) per sub-batch, in token budgets (the KV memory)
OOM_ADVICE = "Lower reward.token_budget (training: train.max_length), or free the GPU"


@dataclass
class ScoreGroup:
    """Completions sharing a prompt. Row i is scored from token `score_from[i]` of its completion
    (non-zero only when a chat template renders the prompt differently once followed by an answer)."""

    prompt_ids: list[int]
    completions: list[list[int]]
    score_from: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("a score group needs at least one prompt token")
        if not self.score_from:
            self.score_from = [0] * len(self.completions)


def token_logprobs_from_hidden(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[target] for M positions (hidden: [M, H]; targets: [M] -> float32 [M]),
    by the output layer of the device's profile (`icr.engines.scoring.head`). With the model split over
    GPUs (`models.device_map`) the last layer's output moves to the output layer's GPU first."""
    head_device = model.get_output_embeddings().weight.device
    if hidden.device != head_device:
        hidden, targets = hidden.to(head_device), targets.to(head_device)
    return profile_for(hidden.device).output_layer(model, hidden, targets)


GQA_ATTENTION = "icr_sdpa_gqa"  # our name in transformers' AttentionInterface


def _sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, computed on the key/value heads as they are (`enable_gqa`).

    transformers copies every key/value head out to its query heads whenever a mask is given (CUDA's
    masked kernels lack GQA), a copy of the whole cache per layer; PyTorch's CPU kernel takes the mask
    and GQA together, which made scoring about 6% faster on a 2-core CPU (SmolLM2: 9 query, 3 KV heads).
    Softcapping is refused (some transformers versions drop it silently under SDPA); position biases
    go to transformers' own function."""
    if kwargs.get("softcap") is not None:
        raise ValueError("attention softcapping is not supported by SDPA: load the model with eager attention")
    if kwargs.get("position_bias") is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=True,
    )
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def _gqa_attention(model, profile: ScoringProfile):
    """Within the block, a grouped-query model over SDPA uses `_sdpa_gqa_attention` where the device's
    profile asks for it (CPU: PyTorch's kernel takes a mask and GQA together; CUDA's masked ones do not)."""
    config = model.config
    grouped = getattr(config, "num_key_value_heads", None) not in (None, getattr(config, "num_attention_heads", None))
    settable = getattr(type(model), "_can_set_attn_implementation", lambda: False)
    switch = grouped and config._attn_implementation == "sdpa" and profile.kv_heads_as_they_are and settable()
    if not switch:
        yield
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(GQA_ATTENTION, _sdpa_gqa_attention)
    AttentionMaskInterface.register(GQA_ATTENTION, sdpa_mask)  # unregistered names get no mask at all
    model.set_attn_implementation(GQA_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def _sub_batches(
    order: list[int], lengths: list[int], token_budget: int, prompt_lengths: list[int] | None = None
) -> list[list[int]]:
    """Split rows (sorted longest first) so that rows × longest row <= token_budget and, when rows
    carry cached prompts, rows × (longest prompt + longest row) <= CACHE_BUDGET_FACTOR × token_budget."""
    prompt_lengths = prompt_lengths or [0] * len(lengths)
    batches, current = [], []
    for i in order:
        rows = current + [i]
        longest = max(lengths[rows[0]], 1)
        widest_prompt = max(prompt_lengths[r] for r in rows)
        if current and (
            len(rows) * longest > token_budget
            or len(rows) * (widest_prompt + longest) > CACHE_BUDGET_FACTOR * token_budget
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Scorer:
    """The scoring engine of one model, with its state in view: the token budget (an integer as
    given; 'auto' is the device profile's, resolved once when the scorer is made, so every chunk of a
    job is cut alike) and the out-of-memory back-off (the sub-batch size learnt after a failure, kept
    for the scorer's later calls). A stage makes one per model and keeps it for its whole job."""

    def __init__(self, model, token_budget: int | str = 4096, tokenizer=None):
        self.model, self.tokenizer = model, tokenizer
        self.profile = profile_for(next(model.parameters()).device)
        self.token_budget = resolve_token_budget(token_budget, model, self.profile)
        self.backoff = OomBackoff("scoring", OOM_ADVICE)

    @classmethod
    def of(cls, lm: LoadedModel, token_budget: int | str) -> Scorer:
        return cls(lm.model, token_budget, lm.tokenizer)

    @torch.no_grad()
    def score_groups(
        self, groups: Sequence[ScoreGroup], per_token: bool = False
    ) -> list[list[float]] | list[list[list[float]]]:
        """For each group, the summed log-probability of each completion (per-token lists if `per_token`).

        Every prompt runs through the model once (on a GPU, many prompts per forward). The completions
        of all groups are then sorted by length and cut into sub-batches under the token budget, so that
        completions of different prompts share a forward pass with little padding: each row gets its
        own prompt's cache, left-padded to the longest prompt of the sub-batch and masked, and positions
        that continue its own prompt. (Models whose caches are not plain key/value tensors, e.g.
        sliding-window layers, batch only the completions of one prompt together.)"""
        with _gqa_attention(self.model, self.profile):
            return _score_groups(self.model, groups, self.token_budget, per_token, self.profile, self.backoff)


def score_groups(
    model, groups: Sequence[ScoreGroup], token_budget: int | str = 4096, per_token: bool = False
) -> list[list[float]] | list[list[list[float]]]:
    """`Scorer.score_groups` of a scorer made for this one call (`token_budget='auto'`: 4096 on a CPU,
    sized from free memory on a GPU, see `icr.engines.scoring.device`)."""
    return Scorer(model, token_budget).score_groups(groups, per_token)


def _score_groups(model, groups, token_budget, per_token, profile: ScoringProfile, backoff: OomBackoff):
    decoder = model.get_decoder()
    batched = profile.batched_prefill and plain_layers(DynamicCache(config=model.config))
    prefixes = (_prefill_batched if batched else _prefill_each)(decoder, groups, token_budget, profile, backoff)
    mixable = all(plain_layers(p.cache) for p in prefixes)
    rows = [(g, i) for g, group in enumerate(groups) for i in range(len(group.completions))]
    lengths = [len(groups[g].completions[i]) for g, i in rows]
    order = sorted(range(len(rows)), key=lambda r: (-lengths[r], rows[r]))
    prompt_lengths = [prefixes[g].length for g, _ in rows]
    batches = [
        sub
        for part in ([order] if mixable else _split_by_group(order, rows))
        for sub in _sub_batches(part, lengths, token_budget, prompt_lengths)
    ]

    def score(part: list[tuple[int, int]], widths: tuple[int, int]) -> list[tuple]:
        return [(part, *_score_rows(model, decoder, groups, prefixes, part, mixable, profile, widths))]

    scored = []  # (rows of a sub-batch or of a part of one, row of each scored token, their log-probs on the device)
    for batch in batches:
        members = sorted(rows[r] for r in batch)  # a prompt's rows adjacent: its cache is copied in one slice
        widths = _padded_widths(groups, prefixes, members, mixable, profile)
        scored += backoff.run(members, sum(widths), partial(score, widths=widths))
    # The one wait for the device: every sub-batch's numbers come back together.
    flat = iter(torch.cat([logps for *_, logps in scored]).tolist() if scored else [])
    results: list[list] = [[None] * len(group.completions) for group in groups]
    for members, owners, _ in scored:
        per_row: list[list[float]] = [[] for _ in members]
        for r in owners:
            per_row[r].append(next(flat))
        for (g, i), logps in zip(members, per_row):
            results[g][i] = logps if per_token else float(sum(logps))
    return results


def _prefill_each(decoder, groups, token_budget, profile: ScoringProfile, backoff: OomBackoff) -> list[Prefix]:
    """One forward per prompt (CPU: no padding at all; any cache type)."""
    device = next(decoder.parameters()).device

    def prefill(part: list[ScoreGroup]) -> list[Prefix]:  # one row: out of memory is a clear error
        out = decoder(input_ids=profile.to_device([part[0].prompt_ids], device), use_cache=True)
        return [Prefix(out.past_key_values, out.last_hidden_state[0, -1], len(part[0].prompt_ids))]

    return [prefix for group in groups for prefix in backoff.run([group], len(group.prompt_ids), prefill)]


def _prefill_batched(decoder, groups, token_budget, profile: ScoringProfile, backoff: OomBackoff) -> list[Prefix]:
    """Prompts sorted by length, right-padded to a bucketed width, as many per forward as the token
    budget allows. Right padding needs no mask: causal attention keeps a prompt's tokens from seeing the
    padding after them, so each prompt's keys/values and last hidden state are those of its own forward.
    Each prefix is a view of its rows of the batch's cache."""
    device = next(decoder.parameters()).device
    lengths = [len(g.prompt_ids) for g in groups]
    order = sorted(range(len(groups)), key=lambda k: (-lengths[k], k))
    widths = [profile.round_width(n) for n in lengths]

    def prefill(part: list[int], width: int) -> list[Prefix]:
        ids = [groups[k].prompt_ids + [groups[k].prompt_ids[-1]] * (width - lengths[k]) for k in part]
        out = decoder(input_ids=profile.to_device(ids, device), use_cache=True)
        ends = profile.to_device([lengths[k] - 1 for k in part], device)
        lasts = out.last_hidden_state[torch.arange(len(part), device=device), ends]
        return [
            Prefix(row_view(out.past_key_values, row, lengths[k]), lasts[row], lengths[k]) for row, k in enumerate(part)
        ]

    prefixes: list[Prefix | None] = [None] * len(groups)
    for batch in _sub_batches(order, widths, token_budget):
        width = widths[batch[0]]  # a batch that runs out of memory is prefilled in parts of this width
        for k, prefix in zip(batch, backoff.run(batch, width, partial(prefill, width=width))):
            prefixes[k] = prefix
    return prefixes


def _split_by_group(order: list[int], rows: list[tuple[int, int]]) -> list[list[int]]:
    """`order` cut into one list per group, each in the order it had."""
    parts: dict[int, list[int]] = {}
    for r in order:
        parts.setdefault(rows[r][0], []).append(r)
    return list(parts.values())


def _padded_widths(
    groups, prefixes, batch: list[tuple[int, int]], plain: bool, profile: ScoringProfile
) -> tuple[int, int]:
    """(cached prompt, completion input) widths of a sub-batch: its longest of each, rounded by the
    profile (the completion width is 0 when no completion has a token to feed)."""
    # Inputs are completion[:-1]: the hidden state after the last token predicts nothing we score.
    width = max(len(groups[g].completions[i]) for g, i in batch) - 1
    longest_prompt = max(prefixes[g].length for g, _ in batch)
    if width <= 0:
        return longest_prompt, 0
    return (profile.round_width(longest_prompt) if plain else longest_prompt), profile.round_width(width)


def _score_rows(
    model,
    decoder,
    groups,
    prefixes,
    batch: list[tuple[int, int]],
    plain: bool,
    profile: ScoringProfile,
    widths: tuple[int, int],
) -> tuple[list[int], torch.Tensor]:
    """Per-token log-probabilities of the completions `batch` ((group, completion) pairs, a group's
    rows adjacent; of one group unless the caches are `plain` key/value tensors), padded to `widths`
    (`_padded_widths` of the sub-batch they belong to): the row of each scored token, and the float32
    log-probabilities, left on the device."""
    device = prefixes[0].last_hidden.device
    completions = [groups[g].completions[i] for g, i in batch]
    prompt_width, width = widths
    hidden = None
    if width > 0:
        row_prefix = [g for g, _ in batch]
        prompt_lengths = [prefixes[g].length for g in row_prefix]
        inputs = [c[:-1] + [c[0]] * (width - max(len(c) - 1, 0)) if c else [0] * width for c in completions]
        # Completion tokens are right-padded: causal attention keeps real tokens from seeing them.
        # Cached prompts are left-padded to prompt_width, and the padding masked.
        starts = profile.to_device(prompt_lengths, device)
        columns = torch.arange(prompt_width + width, device=device)
        mask = (columns[None, :] >= (prompt_width - starts)[:, None]).long()
        positions = starts[:, None] + columns[None, :width]
        cache = (
            batch_cache(prefixes, row_prefix, width, prompt_width)
            if plain
            else repeated_cache(prefixes[row_prefix[0]], len(batch))
        )
        hidden = decoder(
            input_ids=profile.to_device(inputs, device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
    # Row r's token j is predicted by hidden[r, j-1], or for j = 0 by its prompt's last hidden state,
    # which sits after the rows × width hidden states in `states`.
    lasts = torch.stack([p.last_hidden for p in prefixes])
    states = lasts if hidden is None else torch.cat([hidden.reshape(-1, hidden.shape[-1]), lasts])
    first_last = states.shape[0] - len(prefixes)
    sources, targets, owners = [], [], []
    for r, ((g, i), c) in enumerate(zip(batch, completions)):
        for j in range(groups[g].score_from[i], len(c)):
            sources.append(first_last + g if j == 0 else r * width + j - 1)
            targets.append(c[j])
            owners.append(r)
    if not sources:
        return owners, torch.empty(0, device=device)
    vectors = states[profile.to_device(sources, device)]
    return owners, token_logprobs_from_hidden(model, vectors, profile.to_device(targets, device))


@torch.no_grad()
def reference_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """Plain per-token log-probabilities: one full forward, full-vocabulary log-softmax.

    Logits at position t predict token t+1, so the completion's tokens are predicted by the
    positions from len(prompt)−1 to the second to last."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    logits = model(input_ids=ids).logits[0].float()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    per_token = logps.gather(1, targets[:, None])[:, 0]
    return per_token[len(prompt_ids) - 1 :].tolist()
