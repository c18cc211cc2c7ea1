"""Out of memory in the engines: a sub-batch that does not fit is split in halves and retried.

Scoring (rewards, reference log-probs) and HF sampling (generation, eval generation) run their
rows through `OomBackoff.run`. On a CUDA out-of-memory error the memory is freed, the rows are
split and retried, and later sub-batches are cut to what fitted; each row is computed at the same
padded widths as in the whole sub-batch, so the results do not depend on the split where the
kernels do not depend on the batch size (CPU: the tests check byte identity). One row that does
not fit is an `icr.core.faults.OutOfMemory` naming the settings to lower.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from icr.core.faults import OutOfMemory, check_stop

log = logging.getLogger(__name__)
T = TypeVar("T")


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types of an accelerator that ran out of memory."""
    import torch

    return (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def free_accelerator_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class OomBackoff:
    """Run row-wise work in sub-batches that fit: `run(rows, width, work)` calls `work(part)` on parts
    of `rows` and concatenates the lists it returns, in order (one result per row, or e.g. one per
    part). A part that runs out of memory is split in halves and retried, and from then on parts
    hold at most half its rows × `width` (the token cells that did not fit), so later sub-batches do
    not fail first. One row that does not fit is an error.

    `work` must compute each row as it would in the whole sub-batch (same padded widths), so that
    the results do not depend on the split. A pending stop signal is acted on between parts."""

    def __init__(self, what: str, advice: str):
        self.what, self.advice = what, advice
        self.max_cells = math.inf
        self.retries = 0

    def run(self, rows: Sequence[T], width: int, work: Callable[[list[T]], list]) -> list:
        rows, width = list(rows), max(1, width)
        per_part = len(rows) if self.max_cells == math.inf else max(1, int(self.max_cells // width))
        out = []
        for k in range(0, len(rows), per_part):
            out += self._attempt(rows[k : k + per_part], width, work)
        return out

    def _attempt(self, part: list[T], width: int, work: Callable[[list[T]], list]) -> list:
        check_stop()
        try:
            return work(part)
        except out_of_memory_errors() as err:
            message = str(err).split("\n")[0]
        # out of the except block: the traceback no longer pins the failed attempt's tensors
        free_accelerator_memory()
        if len(part) == 1:
            raise OutOfMemory(
                f"{self.what}: out of memory on a single row of {width} tokens ({message}). {self.advice}"
            )
        self.retries += 1
        self.max_cells = min(self.max_cells, len(part) * width / 2)
        half = len(part) // 2
        log.warning(
            "%s: out of memory on %d rows of %d tokens; retrying as %d + %d rows (and at most %d rows "
            "of this width from now on)",
            self.what,
            len(part),
            width,
            half,
            len(part) - half,
            max(1, int(self.max_cells // width)),
        )
        return self._attempt(part[:half], width, work) + self._attempt(part[half:], width, work)
