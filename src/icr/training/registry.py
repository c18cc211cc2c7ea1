"""`train.loss` → the function that trains π^{t+1} from π^t on a pairs file. Every entry has
`icr.training.trainer.train_dpo`'s arguments and returns its metrics (`steps`, `after`, ...)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

TRAINERS: dict[str, tuple[str, str]] = {
    "dpo": ("icr.training.trainer", "train_dpo"),  # DPO + λ·NLL(chosen), the paper (§3.3)
    "kto": ("icr.training.kto", "train_kto"),  # TRL's KTO on the pairs as unpaired examples
}


def trainer_for(loss: str) -> Callable[..., dict]:
    """The training function of `train.loss` (imported on use: each pulls in TRL)."""
    module, name = TRAINERS[loss]
    return getattr(importlib.import_module(module), name)
