"""The stages of an ICR iteration, in order: generate → reward → pairs → train.

`STAGES` is the one table of stages: the CLI makes a command of each, `icr run` runs them in this
order, the manifest records each under its name with the hash of its config `sections`.
"""

from icr.stages import generate, pairs, reward, train
from icr.stages.base import Stage, StageContext

STAGES: dict[str, Stage] = {stage.name: stage for stage in (generate.STAGE, reward.STAGE, pairs.STAGE, train.STAGE)}

__all__ = ["STAGES", "Stage", "StageContext"]
