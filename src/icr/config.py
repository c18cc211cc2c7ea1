"""Configuration: one pydantic model per stage, nested in one `RunConfig`.

The same tree is read from YAML and from command-line flags (`--generate.n 4` sets
`generate.n`), and it is validated before any model is loaded: unknown keys and impossible
values are errors that name the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from icr.languages import check_language

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


# Fields marked with this do not change what a stage computes (where logs go, names): they are left
# out of the config hash, so changing them never refuses to resume a run.
NOT_HASHED = {"hashed": False}


def hashed_fields(section: BaseModel) -> dict[str, Any]:
    """`section.model_dump()` without the fields marked `NOT_HASHED` (recursively)."""
    out = {}
    for name, info in type(section).model_fields.items():
        if (info.json_schema_extra or {}).get("hashed", True) is False:
            continue
        value = getattr(section, name)
        out[name] = hashed_fields(value) if isinstance(value, BaseModel) else section.model_dump(include={name})[name]
    return out


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelsConfig(StrictModel):
    policy: str = Field(
        DEFAULT_MODEL,
        description="π^0, the English DPO model that iteration 0 samples from and scores with "
        "(Hub id, local directory, .gguf file or 'embedded:smollm2-135m-instruct').",
    )
    reference: str = Field(DEFAULT_MODEL, description="π_ref, the reference (SFT) model of the DPO model.")
    translator: str | None = Field(
        None, description="Model that translates responses to English in `reward.mode: translate` "
        "(default: the reference model)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: auto = bfloat16 on a GPU, float32 on a CPU."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    trust_remote_code: bool = Field(False, description="Allow model repositories to run their own code.")
    allow_pickle: bool = Field(
        False, description="Allow loading pickle-based (.bin) checkpoints; safetensors only otherwise."
    )


class DataConfig(StrictModel):
    prompts: str = Field(
        "embedded:demo",
        description="Folder with one {lang}.jsonl/.json per language, a Hub dataset id, or 'embedded:demo'.",
    )
    languages: list[str] = Field(["en", "es", "de", "fr", "ru"], description="ISO 639-1 codes to align.")
    id_field: str | None = Field(None, description="Field aligning prompts across languages "
                                 "(default: 'instruction_id' if present, else 'id').")
    text_field: str = Field("instruction", description="Field holding the prompt text.")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompt ids (in English file order).")
    max_prompt_tokens: int = Field(
        1024, ge=8, description="Prompts longer than this many tokens are skipped with a warning and "
        "listed in the stage's log (never truncated silently)."
    )

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one language is required")
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate languages in {value}")
        return [check_language(code) for code in value]


class GenerateConfig(StrictModel):
    n: int = Field(10, ge=2, description="Responses sampled per prompt (paper: 10).")
    temperature: float = Field(0.9, gt=0, description="Sampling temperature (paper: 0.9).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (paper: 1.0).")
    max_new_tokens: int = Field(512, ge=1, description="Token limit per response.")
    batch_prompts: int = Field(8, ge=1, description="Prompts decoded together (each with its n samples); "
                               "fixed chunks of the prompt list, so results do not depend on resumption.")
    backend: Literal["hf", "vllm"] = Field("hf", description="Generation backend.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor-parallel size.")


class RewardConfig(StrictModel):
    mode: Literal["crosslingual", "multilingual", "translate"] = Field(
        "crosslingual", description="Which instruction a response is scored against: the English one "
        "with 'answer in <language>' (ICR), the native one, or the English one after translating the response."
    )
    beta: float = Field(0.1, gt=0, description="β of r = β·(log π(y|x) − log π_ref(y|x)); only rescales.")
    reference: Literal["original", "previous"] = Field(
        "original", description="Reference of iteration t's reward: the original π_ref, or π^{t−1} (ablation)."
    )
    crosslingual_template: str = Field(
        "{instruction}\n\nPlease answer only in {language}.",
        description="English instruction shown to the reward models in crosslingual mode "
        "({instruction}, {language}); English prompts are scored under the plain instruction.",
    )
    token_budget: int = Field(4096, ge=64, description="Max tokens per scoring forward pass.")
    batch_prompts: int = Field(8, ge=1, description="Prompts scored together (their responses share forward "
                               "passes); fixed chunks of the generation file, so results do not depend on resuming.")

    @field_validator("crosslingual_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        try:
            value.format(instruction="", language="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"only {{instruction}} and {{language}} may be used: {err!r}") from None
        if "{instruction}" not in value:
            raise ValueError("the template must contain {instruction}")
        return value
    translate_max_new_tokens: int = Field(512, ge=1, description="Token limit for translations.")


class PairsConfig(StrictModel):
    length_control: bool = Field(True, description="Rank by r − α·len(y) with α fitted per language.")
    length_unit: Literal["chars", "tokens"] = Field(
        "chars", description="Length used for length control (chars = paper; tokens compare across scripts)."
    )
    alpha_max: float = Field(1.0, gt=0, description="α is searched in [0, alpha_max) (paper: [0, 1)).")
    max_chosen_score: float | None = Field(None, description="Drop a prompt if its best score is above this.")
    min_margin: float = Field(0.0, ge=0, description="Drop pairs whose reward margin is below this.")
    drop_identical: bool = Field(True, description="Drop pairs whose chosen and rejected texts are identical.")
    language_filter: bool = Field(True, description="Drop responses confidently detected as another language.")
    language_min_confidence: float = Field(
        0.5, ge=0, le=1, description="A response is off-language only if another language wins with at "
        "least this probability."
    )


class LoraConfig(StrictModel):
    enabled: bool = Field(False, description="Train a LoRA adapter instead of all weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field("all-linear", description="Modules that get adapters.")
    merge: bool = Field(True, description="Merge the adapter into the saved model.")


class TrainConfig(StrictModel):
    beta: float = Field(0.1, gt=0, description="DPO β.")
    nll_weight: float = Field(1.0, ge=0, description="λ of loss = DPO + λ·NLL(chosen) (token-mean).")
    learning_rate: float = Field(5e-7, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming up.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs.")
    batch_size: int = Field(2, ge=1, description="Pairs per device per step.")
    grad_accum: int = Field(8, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(2048, ge=16, description="Max prompt+response tokens (longer: truncated at the end).")
    seed: int = Field(0, description="Training seed.")
    precompute_ref: bool = Field(True, description="Compute reference log-probs once before training.")
    group_by_length: bool = Field(True, description="Batch pairs of similar length together (less padding; "
                                  "transformers' LengthGroupedSampler: random groups, sorted within).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models).")
    report_to: list[str] = Field(
        ["none"], description="Experiment trackers TRL logs to: none, tensorboard, wandb, trackio, or any "
        "integration transformers accepts (several as a list). Logs go under <run>/tracking/iter_<t>.",
        json_schema_extra=NOT_HASHED,
    )
    run_name: str | None = Field(
        None, description="Name of the tracked run (wandb, trackio, ...); iteration t logs as <run_name>/iter_<t> "
        "(default: the run's `name`).", json_schema_extra=NOT_HASHED,
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        from icr.tracking import check_report_to

        return check_report_to(value)


class RunConfig(StrictModel):
    name: str = Field("icr", description="Run name: the run lives in <output_dir>/<name>.")
    output_dir: str = Field("runs", description="Folder holding runs.")
    seed: int = Field(0, description="Seed for sampling (per prompt, so results do not depend on batching).")
    iterations: int = Field(2, ge=1, description="ICR iterations T (paper: 2).")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or value in {".", ".."} or "/" in value or "\\" in value or "\x00" in value:
            raise ValueError(f"run name {value!r} must be a plain folder name (no '/', '..')")
        return value

    @model_validator(mode="after")
    def _english_first(self) -> "RunConfig":
        if self.reward.mode != "multilingual" and "en" not in self.data.languages:
            raise ValueError(f"reward.mode={self.reward.mode} needs the English prompts: add 'en' to data.languages")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (plus the seed), to detect a changed config on resume."""
        payload = {s: hashed_fields(getattr(self, s)) if s != "seed" else self.seed for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A config that does not validate; the message names every offending field."""


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {field}: {e['msg']}")
    return "invalid config:\n" + "\n".join(lines)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set tree['a']['b'] = value for dotted = 'a.b', creating sections as needed."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    node[keys[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML would
    silently keep the last one, dropping e.g. a whole earlier `train:` section)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults), apply dotted overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                tree = yaml.load(f, Loader=_UniqueKeyLoader) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not a valid YAML file: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def iter_fields(model: type[BaseModel] = RunConfig, prefix: str = ""):
    """Yield (dotted name, field info, annotation) for every leaf field of the config tree."""
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from iter_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info, ann
