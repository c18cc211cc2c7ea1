"""The key/value caches the scorer builds (`icr.engines.scoring.scorer`).

* `Prefix`: a prompt after its forward pass (its cache, and the hidden state that predicts the
  first completion token);
* `batch_cache`: one cache for a sub-batch of completions of many prompts, allocated once at its
  final width, each row holding its prompt's keys/values left-padded to the sub-batch's prompt width;
  the completion's keys/values are written into it in place (`FilledLayer`);
* `row_view`: one prompt's rows of a batched prefill's cache, as views;
* `repeated_cache`: one prompt's cache of any layer type (e.g. sliding-window), repeated over rows.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer


@dataclass
class Prefix:
    """A prompt after its forward pass: its key/value cache and the hidden state that predicts
    the first completion token."""

    cache: object
    last_hidden: torch.Tensor
    length: int


def plain_layers(cache) -> bool:
    """Caches whose layers are plain growing key/value tensors can be stacked across prompts."""
    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class FilledLayer(DynamicLayer):
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


def batch_cache(prefixes: list[Prefix], row_prefix: list[int], width: int, prompt_width: int | None = None):
    """One cache for a sub-batch, allocated at its final width: row r holds prompt `row_prefix[r]`,
    left-padded with zeros to `prompt_width` (default: the longest prompt; the caller masks the padding),
    then room for `width` completion tokens, which `FilledLayer.update` writes in place. Rows of one
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
        layers.append(FilledLayer(*tensors, filled=prompt_width))
    return Cache(layers=layers)


def repeated_cache(prefix: Prefix, rows: int):
    """A copy of one prompt's cache, of any layer type, repeated over `rows` rows."""
    cache = copy.deepcopy(prefix.cache)
    cache.batch_repeat_interleave(rows)
    return cache


def row_view(cache, row: int, length: int) -> Cache:
    """Row `row`'s first `length` positions of a plain key/value cache, as a cache of views (no copy)."""
    layers = []
    for layer in cache.layers:
        view = DynamicLayer()
        view.keys = layer.keys[row : row + 1, ..., :length, :]
        view.values = layer.values[row : row + 1, ..., :length, :]
        view.dtype, view.device, view.is_initialized = view.keys.dtype, view.keys.device, True
        layers.append(view)
    return Cache(layers=layers)
