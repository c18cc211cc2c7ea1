"""The run config: one pydantic section per concern, nested in one `RunConfig` (`icr run` and
the stage commands); `icr.config.base` reads and validates it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from icr.config.base import (
    DEFAULT_MODEL,
    HASHED_WHEN_SET,
    NOT_HASHED,
    Device,
    Dtype,
    LanguageFilter,
    Languages,
    RewardMode,
    SamplingBackend,
    ScoreTokens,
    StrictModel,
    build_config,
    hashed_fields,
)
from icr.config.iterations import IterationOverride, check_overrides, iteration_config
from icr.config.train import TrainConfig
from icr.config.vllm import check_vllm_args

# The released scripts' prefix (utils/inference.py, PREFIX), put before the English instruction
# inside the user turn (utils/compute_reward_score.py, cross_implicit_reward_prompt).
PAPER_CROSSLINGUAL_TEMPLATE = (
    "Please answer the following instruction using only {language}, unless explicitly instructed to "
    "respond in a different language.\n\n{instruction}"
)


class ModelsConfig(StrictModel):
    policy: str = Field(
        DEFAULT_MODEL,
        description="π^0, the English DPO model that iteration 0 samples from and scores with "
        "(Hub id, local directory, .gguf file or 'embedded:smollm2-135m-instruct').",
    )
    reference: str = Field(DEFAULT_MODEL, description="π_ref, the reference (SFT) model of the DPO model.")
    translator: str | None = Field(
        None,
        description="Model that translates responses to English in `reward.mode: translate` "
        "(default: the policy of the iteration, as the released scripts do).",
    )
    dtype: Dtype = "auto"
    device: Device = "auto"
    device_map: Literal["auto", "balanced"] | None = Field(
        None,
        description="Split each scoring model over the node's GPUs (accelerate's big-model inference), for "
        "models one GPU cannot hold: under accelerate launch one process per node then scores, the node's "
        "others wait. null: each process holds whole models on its own device. icr plan says when it is needed.",
        json_schema_extra=NOT_HASHED,
    )
    trust_remote_code: bool = Field(False, description="Allow model repositories to run their own code.")
    allow_pickle: bool = Field(
        False, description="Allow loading pickle-based (.bin) checkpoints; safetensors only otherwise."
    )

    def load(self, spec: str):
        """`icr.core.models.load_model(spec)` with this section's device, dtype, remote-code and pickle
        settings: the one way a command loads a model it configures."""
        from icr.core.models import load_model

        return load_model(spec, self.device, self.dtype, self.trust_remote_code, self.allow_pickle, self.device_map)


class DataConfig(StrictModel):
    prompts: str = Field(
        "embedded:demo",
        description="Folder with one {lang}.jsonl/.json per language, 'embedded:demo', or a table datasets "
        "reads: a .parquet/.csv/.arrow/.jsonl file, a folder laid out as a Hub dataset, or a Hub dataset id "
        "(from the local cache offline); see docs/hub.md.",
    )
    config: str | None = Field(
        None,
        description="datasets config (subset) of a table source with a language column; without "
        "data.language_field, each language is read from the config named by its code.",
    )
    split: str = Field("train", description="Split of a folder or Hub dataset source.")
    language_field: str | None = Field(
        None,
        description="Column holding each row's language in one table with all languages "
        "[default: 'lang' for a single file; per-language configs for a folder or Hub dataset].",
    )
    languages: Languages = Field(["en", "es", "de", "fr", "ru"], description="ISO 639-1 codes to align.")
    id_field: str | None = Field(
        None, description="Field aligning prompts across languages (default: 'instruction_id' if present, else 'id')."
    )
    text_field: str = Field("instruction", description="Field holding the prompt text.")
    rows: list[int] | None = Field(
        None,
        description="[start, end]: only the prompt ids at positions start..end−1 of the English file order "
        "(0-based, end excluded), e.g. [3000, 6000]; data.limit then counts from start.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N prompt ids (in English file order).")

    @field_validator("rows")
    @classmethod
    def _row_block(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or not 0 <= value[0] < value[1]):
            raise ValueError(f"rows must be [start, end] with 0 <= start < end, got {value}")
        return value

    max_prompt_tokens: int = Field(
        1024,
        ge=8,
        description="Prompts longer than this many tokens are skipped with a warning and "
        "listed in the stage's log (never truncated silently).",
    )


class SamplingConfig(StrictModel):
    """How responses are sampled: by `generate` (training data, these defaults) and by `icr eval`
    (benchmark outputs, with the paper's evaluation decoding)."""

    temperature: float = Field(
        0.9, gt=0, description="Sampling temperature (paper: 0.9 for training data, 0.6 for evaluation)."
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling mass (paper: 1.0 for training data, 0.9 for evaluation)."
    )
    max_new_tokens: int = Field(512, ge=1, description="Token limit per response (paper: 2048 for evaluation).")
    batch_prompts: int = Field(
        8,
        ge=1,
        description="Prompts decoded together (each with its n samples); "
        "fixed chunks of the prompt list, so results do not depend on resumption.",
    )
    backend: SamplingBackend = Field("hf", description="Generation backend.")
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM: GPUs one engine splits the model over by tensor parallelism. Under accelerate launch "
        "each process starts its own engine on its own tensor_parallel_size × pipeline_parallel_size GPUs of "
        "the node (icr.runtime.placement).",
    )
    pipeline_parallel_size: int = Field(
        1,
        ge=1,
        description="vLLM: pipeline stages of one engine (GPUs per engine = tensor × pipeline).",
        json_schema_extra=HASHED_WHEN_SET,
    )
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None,
        description="vLLM's executor of a multi-GPU engine: mp (the GPUs of one node) or ray (an engine spread "
        "over nodes of a running Ray cluster; launch icr once, not under accelerate launch). null: vLLM's choice.",
        json_schema_extra=NOT_HASHED,
    )
    vllm_args: dict[str, Any] = Field(
        {},
        description="Any other vLLM engine argument, passed as given (e.g. {max_model_len: 4096, "
        "enforce_eager: true}); checked against vLLM's EngineArgs (icr.config.vllm). Arguments icr sets "
        "itself are refused with the icr setting to use.",
        json_schema_extra=HASHED_WHEN_SET,
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="vLLM: share of GPU memory its engine may take (vLLM's default). vLLM "
        "runs in a child process that exits when its generation ends (the generate stage, or one model's "
        "eval outputs), so the memory is free again for scoring.",
    )

    @field_validator("vllm_args")
    @classmethod
    def _known_vllm_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_vllm_args(value)


class GenerateConfig(SamplingConfig):
    n: int = Field(10, ge=2, description="Responses sampled per prompt (paper: 10).")

    @model_serializer(mode="wrap")
    def _n_first(self, handler):
        """`n` first, where config files written before the sampling fields were shared have it."""
        data = handler(self)
        return {"n": data.pop("n"), **data}


class RewardConfig(StrictModel):
    mode: RewardMode = Field(
        "crosslingual",
        description="Which instruction a response is scored against: the English one "
        "with 'answer in <language>' (ICR), the native one, or the English one after translating the response.",
    )
    beta: float = Field(0.1, gt=0, description="β of r = β·(log π(y|x) − log π_ref(y|x)); only rescales.")
    reference: Literal["original", "previous"] = Field(
        "original", description="Reference of iteration t's reward: the original π_ref, or π^{t−1} (ablation)."
    )
    crosslingual_template: str = Field(
        PAPER_CROSSLINGUAL_TEMPLATE,
        description="User turn shown to the reward models in crosslingual mode ({instruction} = the English "
        "instruction, {language} = the response's language); default: the released scripts' prefix. "
        "English prompts are scored under the plain instruction.",
    )
    score_tokens: ScoreTokens = Field(
        "all",
        description="Tokens summed into log π(y|x): 'all' = every response token plus the template's "
        "end-of-turn token(s) and what follows them, what DPO trains on; 'skip_first' = the released scorer's "
        "tokens: prompt + response + end-of-turn tokenized as one string, the response minus its first token "
        "plus the end-of-turn token (for reproducing its numbers).",
    )
    token_budget: int | Literal["auto"] = Field(
        "auto",
        description="Max tokens per scoring forward pass; auto = 4096 on a CPU, sized from free "
        "memory on a GPU (icr.engines.scoring.device; give a number for identical sub-batches across machines). "
        "Also the budget of the reference scoring before training.",
    )
    batch_prompts: int = Field(
        8,
        ge=1,
        description="Prompts scored together (their responses share forward "
        "passes); fixed chunks of the generation file, so results do not depend on resuming.",
    )

    @field_validator("token_budget")
    @classmethod
    def _budget_floor(cls, value: int | str) -> int | str:
        if value != "auto" and value < 64:
            raise ValueError("token_budget must be 'auto' or at least 64")
        return value

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

    translate_max_new_tokens: int = Field(
        8192, ge=1, description="Token limit for translations: large enough for whole responses (released: 8192)."
    )


class PairsConfig(StrictModel):
    length_control: bool = Field(True, description="Rank by r − α·len(y) with α fitted per language.")
    length_unit: Literal["chars", "tokens"] = Field(
        "chars", description="Length used for length control (chars = paper; tokens compare across scripts)."
    )
    alpha_max: float = Field(
        1.0,
        gt=0,
        description="α is searched in [0, alpha_max), on the paper's scale: per unit of length, in "
        "nats of the raw log-ratio log π − log π_ref (no β) (paper: [0, 1)).",
    )
    alpha_search: Literal["exact", "grid"] = Field(
        "exact",
        description="How α is searched: 'grid' = the released scan of [0, alpha_max) in steps of 0.001, first α "
        "with the smallest |length gap| (the paper); 'exact' = that grid plus one α inside every interval "
        "between the points where a prompt's chosen or rejected response changes, so an α the grid steps "
        "over is found (never a worse gap than 'grid', sometimes other pairs).",
    )
    max_chosen_score: float | None = Field(
        None,
        description="Drop a prompt if its best score is above this; the score is log π − log π_ref − "
        "α·len(y), in nats (no β).",
    )
    min_margin: float = Field(
        0.0,
        ge=0,
        description="Drop pairs whose score margin is below this, in nats of (log π − log π_ref − α·len(y)) (no β).",
    )
    drop_identical: bool = Field(True, description="Drop pairs whose chosen and rejected texts are identical.")
    language_filter: LanguageFilter = Field(
        "off",
        description="Responses confidently detected as another language: 'off' = ranked like any "
        "other (the paper); 'chosen' = may be rejected, never chosen; 'all' = dropped before selection.",
    )

    @field_validator("language_filter", mode="before")
    @classmethod
    def _filter_from_boolean(cls, value: Any) -> Any:
        # YAML reads an unquoted `off` as false; `true`/`false` are also what configs written before
        # the three settings held (true = drop off-language responses = 'all').
        return {False: "off", True: "all"}.get(value, value) if isinstance(value, bool) else value

    language_min_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A response is off-language only if another language wins with at least this probability.",
    )


RUN_SECTIONS = ("seed", "models", "data", "generate", "reward", "pairs", "train")  # what a run's results depend on
# The manifest's hash of the whole run: the sections and the per-iteration settings. A stage's own hash
# is taken from its iteration's config (`RunConfig.at_iteration`), which has the settings applied.
RUN_HASHED = (*RUN_SECTIONS, "iteration_overrides")


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
    iteration_overrides: list[IterationOverride] = Field(
        [],
        description="Per-iteration settings: entries {iteration: t, set: {field: value}} that change "
        "data.rows, data.limit, pairs.* or train.* for iteration t only (icr.config.iterations). "
        "On the command line: a YAML list, e.g. '[{iteration: 1, set: {pairs.max_chosen_score: 500}}]'.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or value in {".", ".."} or "/" in value or "\\" in value or "\x00" in value:
            raise ValueError(f"run name {value!r} must be a plain folder name (no '/', '..')")
        return value

    @model_validator(mode="after")
    def _english_first(self) -> RunConfig:
        if self.reward.mode != "multilingual" and "en" not in self.data.languages:
            raise ValueError(f"reward.mode={self.reward.mode} needs the English prompts: add 'en' to data.languages")
        return self

    @model_validator(mode="after")
    def _overrides_valid(self) -> RunConfig:
        check_overrides(self)
        return self

    def at_iteration(self, t: int) -> RunConfig:
        """The config iteration t runs under (`icr.config.iterations.iteration_config`)."""
        return iteration_config(self, t)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections (plus the seed), to detect a changed config on resume."""
        payload: dict[str, Any] = {}
        for s in sections:
            if s == "iteration_overrides":  # absent when empty: hashes of configs without it stay as they were
                if self.iteration_overrides:
                    payload[s] = [o.model_dump(mode="json") for o in self.iteration_overrides]
            else:
                payload[s] = hashed_fields(getattr(self, s)) if s != "seed" else self.seed
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults), apply dotted overrides, validate."""
    return build_config(RunConfig, path, overrides)
