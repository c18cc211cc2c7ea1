"""Configuration: one pydantic model per concern, for every command (see `base` for reading and
validating, `run` for `icr run` and its stages, `train` for its training section, `commands` for the others)."""

from icr.config.base import (
    DEFAULT_MODEL,
    StrictModel,
    build_config,
    dump_config,
    iter_fields,
    read_yaml_tree,
    set_dotted,
)
from icr.config.commands import (
    AccuracyConfig,
    AlignConfig,
    EvalConfig,
    ExportConfig,
    JudgeConfig,
    PlanConfig,
    PlanEvalConfig,
    ScoreConfig,
)
from icr.config.run import (
    DataConfig,
    GenerateConfig,
    ModelsConfig,
    PairsConfig,
    RewardConfig,
    RunConfig,
    SamplingConfig,
    load_config,
)
from icr.config.train import LoraConfig, TrainConfig
from icr.core.errors import ConfigError

__all__ = [
    "DEFAULT_MODEL",
    "StrictModel",
    "build_config",
    "dump_config",
    "iter_fields",
    "read_yaml_tree",
    "set_dotted",
    "AccuracyConfig",
    "AlignConfig",
    "EvalConfig",
    "ExportConfig",
    "JudgeConfig",
    "PlanConfig",
    "PlanEvalConfig",
    "ScoreConfig",
    "DataConfig",
    "GenerateConfig",
    "LoraConfig",
    "ModelsConfig",
    "PairsConfig",
    "RewardConfig",
    "RunConfig",
    "SamplingConfig",
    "TrainConfig",
    "load_config",
    "ConfigError",
]
