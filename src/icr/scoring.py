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
* the output layer is applied only to the positions that are scored, by chunks (`icr.scoring_head`):
  a full-vocabulary log-softmax over every position of a batch is never held in memory;
* what differs between a CPU and a GPU (output-layer strategy, prompts per prefill forward, shape
  bucketing, `token_budget: auto`) is a device profile, `icr.scoring_device`; the log-probabilities
  of all sub-batches are read back from the device once, at the end.

`reference_logprobs` is the plain computation (one full forward per sequence, full log-softmax);
tests hold the scorer to it within 1e-4 per token.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from icr.models import LoadedModel, tokenize_exchange
from icr.scoring_device import ScoringProfile, profile_for, resolve_token_budget
from icr.scoring_head import _logit_transform  # noqa: F401  (re-exported: part of the scorer's interface)

CACHE_BUDGET_FACTOR = 2  # rows × (cached prompt + completion) per sub-batch, in token budgets (the KV memory)


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
    by the output layer of the device's profile (`icr.scoring_head`)."""
    return profile_for(hidden.device).output_layer(model, hidden, targets)


GQA_ATTENTION = "icr_sdpa_gqa"  # our name in transformers' AttentionInterface


def _sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                        **kwargs):
    """transformers' SDPA attention, computed on the key/value heads as they are (`enable_gqa`).

    transformers copies every key/value head out to its query heads whenever a mask is given (CUDA's
    masked kernels lack GQA), a copy of the whole cache per layer; PyTorch's CPU kernel takes the mask
    and GQA together, which made scoring about 6% faster on a 2-core CPU (SmolLM2: 9 query, 3 KV heads).
    What plain SDPA does not cover (softcapping, position biases) goes to transformers' own function."""
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=True)
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


def _sub_batches(order: list[int], lengths: list[int], token_budget: int,
                 prompt_lengths: list[int] | None = None) -> list[list[int]]:
    """Split rows (sorted longest first) so that rows × longest row <= token_budget and, when rows
    carry cached prompts, rows × (longest prompt + longest row) <= CACHE_BUDGET_FACTOR × token_budget."""
    prompt_lengths = prompt_lengths or [0] * len(lengths)
    batches, current = [], []
    for i in order:
        rows = current + [i]
        longest = max(lengths[rows[0]], 1)
        widest_prompt = max(prompt_lengths[r] for r in rows)
        if current and (len(rows) * longest > token_budget
                        or len(rows) * (widest_prompt + longest) > CACHE_BUDGET_FACTOR * token_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class _Prefix:
    """A prompt after its forward pass: its key/value cache and the hidden state that predicts
    the first completion token."""

    cache: object
    last_hidden: torch.Tensor
    length: int


def _plain_layers(cache) -> bool:
    """Caches whose layers are plain growing key/value tensors can be stacked across prompts."""
    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class _FilledLayer(DynamicLayer):
    """A key/value cache layer whose tensors already have their final width: `update` writes the new
    tokens in place (DynamicLayer concatenates: a copy of the whole cache per layer and pass)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
        super().__init__()
        self.keys, self.values, self.filled = keys, values, filled
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.filled + key_states.shape[-2]
        self.keys[..., self.filled : end, :] = key_states
        self.values[..., self.filled : end, :] = value_states
        self.filled = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def get_seq_length(self) -> int:
        return self.filled


def _batch_cache(prefixes: list[_Prefix], row_prefix: list[int], width: int, prompt_width: int | None = None):
    """One cache for a sub-batch, allocated at its final width: row r holds prompt `row_prefix[r]`,
    left-padded with zeros to `prompt_width` (default: the longest prompt; the caller masks the padding),
    then room for `width` completion tokens, which `_FilledLayer.update` writes in place. Rows of one
    prompt must be adjacent."""
    prompt_width = prompt_width or max(prefixes[k].length for k in row_prefix)
    spans, start = [], 0  # (prompt, first row, end row)
    for k, rows in itertools.groupby(row_prefix):
        end = start + len(list(rows))
        spans.append((k, start, end))
        start = end
    layers = []
    for layer_idx in range(len(prefixes[0].cache.layers)):
        tensors = []
        for name in ("keys", "values"):
            first = getattr(prefixes[0].cache.layers[layer_idx], name)
            buffer = first.new_empty((len(row_prefix), *first.shape[1:-2], prompt_width + width, first.shape[-1]))
            for k, r0, r1 in spans:
                pad = prompt_width - prefixes[k].length
                buffer[r0:r1, ..., :pad, :] = 0  # masked, but garbage there could be NaN, and NaN x 0 = NaN
                buffer[r0:r1, ..., pad:prompt_width, :] = getattr(prefixes[k].cache.layers[layer_idx], name)
            tensors.append(buffer)
        layers.append(_FilledLayer(*tensors, filled=prompt_width))
    return Cache(layers=layers)


def _repeated_cache(prefix: _Prefix, rows: int):
    """A copy of one prompt's cache, of any layer type, repeated over `rows` rows."""
    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(rows)
    return cache


@torch.no_grad()
def score_groups(
    model, groups: Sequence[ScoreGroup], token_budget: int | str = 4096, per_token: bool = False
) -> list[list[float]] | list[list[list[float]]]:
    """For each group, the summed log-probability of each completion (per-token lists if `per_token`).

    Every prompt runs through the model once (on a GPU, many prompts per forward). The completions of
    all groups are then sorted by length and cut into sub-batches under the token budget, so that
    completions of different prompts share a forward pass with little padding: each row gets its own
    prompt's cache, left-padded to the longest prompt of the sub-batch and masked, and positions that
    continue its own prompt. (Models whose caches are not plain key/value tensors, e.g. sliding-window
    layers, batch only the completions of one prompt together.) `token_budget='auto'` takes the device
    profile's (`icr.scoring_device`): 4096 on a CPU, sized from free memory on a GPU."""
    profile = profile_for(next(model.parameters()).device)
    with _gqa_attention(model, profile):
        return _score_groups(model, groups, resolve_token_budget(token_budget, model, profile), per_token, profile)


def _score_groups(model, groups, token_budget, per_token, profile: ScoringProfile):
    decoder = model.get_decoder()
    batched = profile.batched_prefill and _plain_layers(DynamicCache(config=model.config))
    prefixes = (_prefill_batched if batched else _prefill_each)(decoder, groups, token_budget, profile)
    mixable = all(_plain_layers(p.cache) for p in prefixes)
    rows = [(g, i) for g, group in enumerate(groups) for i in range(len(group.completions))]
    lengths = [len(groups[g].completions[i]) for g, i in rows]
    order = sorted(range(len(rows)), key=lambda r: (-lengths[r], rows[r]))
    prompt_lengths = [prefixes[g].length for g, _ in rows]
    batches = [sub for part in ([order] if mixable else _split_by_group(order, rows))
               for sub in _sub_batches(part, lengths, token_budget, prompt_lengths)]
    scored = []  # (rows of the sub-batch, row of each scored token, their log-probs on the device)
    for batch in batches:
        members = sorted(rows[r] for r in batch)  # a prompt's rows adjacent: its cache is copied in one slice
        scored.append((members, *_score_rows(model, decoder, groups, prefixes, members, mixable, profile)))
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


def _prefill_each(decoder, groups, token_budget, profile: ScoringProfile) -> list[_Prefix]:
    """One forward per prompt (CPU: no padding at all; any cache type)."""
    device = next(decoder.parameters()).device
    prefixes = []
    for group in groups:
        out = decoder(input_ids=profile.to_device([group.prompt_ids], device), use_cache=True)
        prefixes.append(_Prefix(out.past_key_values, out.last_hidden_state[0, -1], len(group.prompt_ids)))
    return prefixes


def _prefill_batched(decoder, groups, token_budget, profile: ScoringProfile) -> list[_Prefix]:
    """Prompts sorted by length, right-padded to a bucketed width, as many per forward as the token
    budget allows. Right padding needs no mask: causal attention keeps a prompt's tokens from seeing the
    padding after them, so each prompt's keys/values and last hidden state are those of its own forward.
    Each prefix is a view of its rows of the batch's cache."""
    device = next(decoder.parameters()).device
    lengths = [len(g.prompt_ids) for g in groups]
    order = sorted(range(len(groups)), key=lambda k: (-lengths[k], k))
    widths = [profile.round_width(n) for n in lengths]
    prefixes: list[_Prefix | None] = [None] * len(groups)
    for batch in _sub_batches(order, widths, token_budget):
        width = widths[batch[0]]
        ids = [groups[k].prompt_ids + [groups[k].prompt_ids[-1]] * (width - lengths[k]) for k in batch]
        out = decoder(input_ids=profile.to_device(ids, device), use_cache=True)
        ends = profile.to_device([lengths[k] - 1 for k in batch], device)
        lasts = out.last_hidden_state[torch.arange(len(batch), device=device), ends]
        for row, k in enumerate(batch):
            prefixes[k] = _Prefix(_row_view(out.past_key_values, row, lengths[k]), lasts[row], lengths[k])
    return prefixes


def _row_view(cache, row: int, length: int) -> Cache:
    """Row `row`'s first `length` positions of a plain key/value cache, as a cache of views (no copy)."""
    layers = []
    for layer in cache.layers:
        view = DynamicLayer()
        view.keys = layer.keys[row : row + 1, ..., :length, :]
        view.values = layer.values[row : row + 1, ..., :length, :]
        view.dtype, view.device, view.is_initialized = view.keys.dtype, view.keys.device, True
        layers.append(view)
    return Cache(layers=layers)


def _split_by_group(order: list[int], rows: list[tuple[int, int]]) -> list[list[int]]:
    """`order` cut into one list per group, each in the order it had."""
    parts: dict[int, list[int]] = {}
    for r in order:
        parts.setdefault(rows[r][0], []).append(r)
    return list(parts.values())


def _score_rows(model, decoder, groups, prefixes, batch: list[tuple[int, int]], plain: bool,
                profile: ScoringProfile) -> tuple[list[int], torch.Tensor]:
    """Per-token log-probabilities of the completions `batch` ((group, completion) pairs, a group's
    rows adjacent; of one group unless the caches are `plain` key/value tensors): the row of each
    scored token, and the float32 log-probabilities, left on the device."""
    device = prefixes[0].last_hidden.device
    completions = [groups[g].completions[i] for g, i in batch]
    # Inputs are completion[:-1]: the hidden state after the last token predicts nothing we score.
    width = max(len(c) for c in completions) - 1
    hidden = None
    if width > 0:
        width = profile.round_width(width)
        row_prefix = [g for g, _ in batch]
        prompt_lengths = [prefixes[g].length for g in row_prefix]
        prompt_width = profile.round_width(max(prompt_lengths)) if plain else max(prompt_lengths)
        inputs = [c[:-1] + [c[0]] * (width - max(len(c) - 1, 0)) if c else [0] * width for c in completions]
        # Completion tokens are right-padded: causal attention keeps real tokens from seeing them.
        # Cached prompts are left-padded to prompt_width, and the padding masked.
        starts = profile.to_device(prompt_lengths, device)
        columns = torch.arange(prompt_width + width, device=device)
        mask = (columns[None, :] >= (prompt_width - starts)[:, None]).long()
        positions = starts[:, None] + columns[None, :width]
        cache = (_batch_cache(prefixes, row_prefix, width, prompt_width) if plain
                 else _repeated_cache(prefixes[row_prefix[0]], len(batch)))
        hidden = decoder(input_ids=profile.to_device(inputs, device), attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True).last_hidden_state
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


def score_group(
    model, group: ScoreGroup, token_budget: int | str = 4096, per_token: bool = False
) -> list[float] | list[list[float]]:
    """Summed log-probability of each completion of `group` (or per-token lists if `per_token`)."""
    return score_groups(model, [group], token_budget, per_token)[0]


# Leading completion tokens left out of log π(y|x) under each `reward.score_tokens` setting. The
# released scorer (utils/compute_reward_score.py, prepare_data and compute_score) masks positions
# rather than the tokens they predict, which drops the first response token.
SKIPPED_RESPONSE_TOKENS = {"all": 0, "skip_first": 1}


def _exchange_group(lm: LoadedModel, instruction: str, responses: list[str], score_tokens: str
                    ) -> tuple[ScoreGroup, list[int]]:
    """The responses as completions of their shared prompt, and each response's scored token count."""
    skip = SKIPPED_RESPONSE_TOKENS[score_tokens]
    exchanges = [tokenize_exchange(lm.tokenizer, instruction, r) for r in responses]
    shared = min(len(p) for p, _ in exchanges)
    skipped = [min(skip, len(c)) for _, c in exchanges]
    group = ScoreGroup(exchanges[0][0][:shared], [p[shared:] + c for p, c in exchanges],
                       [len(p) - shared + k for (p, _), k in zip(exchanges, skipped)])
    return group, [len(c) - k for (_, c), k in zip(exchanges, skipped)]


def score_responses(lm: LoadedModel, items: list[tuple[str, list[str]]], token_budget: int | str,
                    score_tokens: str = "all") -> list[tuple[list[float], list[int]]]:
    """For each (instruction, responses): (summed log π(y|x) per response, scored token counts),
    the tokens DPO trains on (`icr.models.tokenize_exchange`; `score_tokens` = 'skip_first' leaves
    out the first response token, see `SKIPPED_RESPONSE_TOKENS`), all items scored together."""
    prepared = [_exchange_group(lm, instruction, responses, score_tokens) for instruction, responses in items]
    logps = score_groups(lm.model, [group for group, _ in prepared], token_budget)
    return [(lp, n_tokens) for lp, (_, n_tokens) in zip(logps, prepared)]


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
