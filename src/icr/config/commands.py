"""Configs of the commands that are not a run: `icr eval`, `icr align-english`, `icr reward-accuracy`,
`icr score`.

Their flags are generated from these models like the run's (`icr.cli.options`); `icr eval` keeps
its short flag names (`--judge-model`, `--temperature`), declared in `EvalConfig.cli_flags`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from icr.config.base import Device, Dtype, JudgeBackend, JudgeOrder, Languages, RewardMode, StrictModel
from icr.config.run import ModelsConfig, RewardConfig, SamplingConfig
from icr.config.train import TrainConfig
from icr.core.languages import check_language

EVAL_LANGUAGES = ["en", "es", "de", "fr", "ru", "zh", "th", "sw", "bn"]  # the paper's Table 2


class JudgeConfig(StrictModel):
    backend: JudgeBackend = Field(
        "alpaca_eval",
        description="Judge: alpaca_eval = the paper's (alpaca_eval's weighted_alpaca_eval_gpt4_turbo "
        "annotator from the installed package, plus the paper's language sentence, on an OpenAI-compatible "
        "endpoint); openai = our own A/B prompt on such an endpoint, hf = that prompt on a local model (offline). "
        "openai and hf numbers are NOT comparable with the paper's Table 2.",
    )
    model: str | None = Field(
        None,
        description="Judge model [default: gpt-4-1106-preview for alpaca_eval (its "
        "annotator config) and openai, embedded:smollm2-135m-instruct for hf (a smoke-test "
        "judge only)].",
    )
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL [default: $OPENAI_BASE_URL, else https://api.openai.com/v1]."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key "
        "(the key itself is never accepted on the command line nor written anywhere).",
    )
    concurrency: int = Field(8, ge=1, description="Parallel requests to the endpoint.")
    rpm: float = Field(0.0, ge=0, description="Max requests per minute (0 = no limit).")
    max_retries: int = Field(
        6,
        ge=0,
        description="Retries of a request after a rate limit, server error or network fault (exponential backoff).",
    )
    timeout: float = Field(120.0, gt=0, description="Seconds per request.")
    order: JudgeOrder = Field(
        "random",
        description="random: one judgement per pair, order drawn per instruction "
        "(alpaca_eval); both: judge both orders and average (cancels position bias, twice "
        "the cost).",
    )
    batch_size: int = Field(4, ge=1, description="Prompts per forward pass of a local (hf) judge.")
    cache: str | None = Field(
        None,
        description="Folder of cached judgements, shared by runs [default: "
        "$ICR_CACHE/judgements, i.e. ~/.cache/icr/judgements].",
    )


PAPER_EVAL_DECODING = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 2048}  # the paper's evaluation


def _paper_eval_sampling() -> SamplingConfig:
    return SamplingConfig(**PAPER_EVAL_DECODING)


class EvalConfig(StrictModel):
    """`icr eval`: models to answer X-AlpacaEval with, the judge, the decoding and the outputs."""

    cli_flags: ClassVar[dict[str, str]] = {
        "models": "model",
        "judge.backend": "judge",
        "sampling.batch_prompts": "batch-size",
        "sampling.tensor_parallel_size": "tensor-parallel-size",
    }
    cli_flat_sections: ClassVar[tuple[str, ...]] = ("sampling",)  # --temperature, not --sampling-temperature
    cli_repeated: ClassVar[tuple[str, ...]] = ("models", "outputs")

    models: list[str] = Field(
        [],
        description="A model to evaluate, [NAME=]SPEC (Hub id, folder, .gguf, "
        "embedded:...), optionally named NAME in the table; repeatable. Rows: --run-dir "
        "models, then --model, then --outputs, in the order given.",
    )
    run_dir: str | None = Field(
        None,
        description="An ICR run folder: adds pi0 (models.policy of its config.yaml) "
        "and pi1, pi2, ... (iter_0/model, iter_1/model, ...) as rows.",
    )
    outputs: list[str] = Field(
        [],
        description="NAME=FOLDER: existing outputs to judge instead of generating: "
        "FOLDER holds {lang}.json or {lang}/model_outputs.json in alpaca_eval's format; "
        "repeatable.",
    )
    languages: Languages = Field(
        EVAL_LANGUAGES, description="Comma-separated ISO 639-1 codes (the table's column order)."
    )
    prompts: str = Field(
        description="X-AlpacaEval instructions: a folder (or Hub dataset id) with {lang}.json, or "
        "the benchmark root holding prompts/ and reference/ (e.g. ../shared/data/x-alpacaeval)."
    )
    reference_outputs: str | None = Field(
        None,
        description="Folder or Hub dataset id with the reference's {lang}.json (alpaca_eval format) "
        "[default: <prompts root>/reference/gpt-4-turbo-2024-04-09].",
    )
    limit: int | None = Field(
        None,
        ge=1,
        description="Evaluate only the first N instructions of each language (LC is then marked as a subset).",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    estimate_only: bool = Field(
        False, description="Generate missing outputs, print how many judgements (and ≈tokens) are needed, and stop."
    )
    lc_data: str | None = Field(
        None,
        description="Path of alpaca_eval's df_gamed.csv for the length-controlled "
        "win rate [default: the Hub copy alpaca_eval uses, if cached or online].",
    )
    lc: bool = Field(True, description="Compute the length-controlled win rate.")
    sampling: SamplingConfig = Field(default_factory=_paper_eval_sampling)
    seed: int = Field(0, description="Seed of the per-instruction sampling seeds and of the judging order.")
    device: Device = "auto"
    dtype: Dtype = "auto"
    output: str = Field(
        description="Folder for outputs, annotations, results and the leaderboard (re-running resumes)."
    )

    @model_validator(mode="before")
    @classmethod
    def _paper_decoding_under_the_given_fields(cls, data: Any) -> Any:
        """A `sampling` section that sets some fields keeps the paper's evaluation decoding for the rest."""
        if isinstance(data, dict) and isinstance(data.get("sampling"), dict):
            data = {**data, "sampling": {**PAPER_EVAL_DECODING, **data["sampling"]}}
        return data

    @field_validator("lc_data")
    @classmethod
    def _existing_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{value}: no such file")
        return value


class AlignConfig(StrictModel):
    """`icr align-english`: English DPO from a reference/SFT model (stage 0)."""

    model: str = Field(description="Reference/SFT model to align (Hub id, folder, .gguf).")
    data: str = Field(
        description="English preference data in TRL's format: a .jsonl/.json file or a Hub dataset "
        "id (fields prompt, chosen, rejected; strings or messages); 'embedded:demo' for the demo set."
    )
    split: str = Field("train", description="Rows whose 'split' field (if any) match.")
    output: str = Field(description="Model folder to write.")
    device: Device = "auto"
    train: TrainConfig = Field(default_factory=TrainConfig)


class WithModels(StrictModel):
    """A command that loads its models through `ModelsConfig` (dtype, device, remote code, pickle),
    flagged flat (`--policy`, `--dtype`); top-level YAML keys policy/reference/translator/device/...
    (what `icr reward-accuracy` configs have always held) are read into `models`."""

    cli_flat_sections: ClassVar[tuple[str, ...]] = ("models",)

    models: ModelsConfig = Field(default_factory=ModelsConfig)

    @model_validator(mode="before")
    @classmethod
    def _models_from_top_level(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        moved = {k: data[k] for k in ModelsConfig.model_fields if k in data}
        if not moved:
            return data
        rest = {k: v for k, v in data.items() if k not in moved}
        return {**rest, "models": {**moved, **(rest.get("models") or {})}}


class AccuracyConfig(WithModels):
    """`icr reward-accuracy`: the implicit reward's accuracy on held-out preference pairs."""

    cli_exclude: ClassVar[tuple[str, ...]] = ("reward.mode", "reward.reference")  # `modes`; a run's concern

    pairs: str = Field(
        description="Folder of {lang}.jsonl or one .jsonl file with prompt, prompt_en, chosen, rejected, lang."
    )
    modes: list[RewardMode] = Field(
        ["crosslingual", "multilingual"], min_length=1, description="Comma-separated rewarding modes."
    )
    reward: RewardConfig = Field(default_factory=RewardConfig)
    output: str | None = Field(None, description="Write the table as JSON.")


class ScoreConfig(WithModels):
    """`icr score`: log π, log π_ref and the implicit reward of every response of a preference or
    completion dataset (`icr.score`)."""

    cli_exclude: ClassVar[tuple[str, ...]] = ("reward.mode", "reward.reference")  # `mode`; a run's concern

    pairs: str | None = Field(
        None,
        description="Preference data in TRL's format (prompt, chosen, rejected; strings or messages): a "
        ".jsonl/.json/.parquet/.csv/.arrow file, a folder datasets reads, or a Hub dataset id (local cache).",
    )
    responses: str | None = Field(
        None, description="Completion data in TRL's format (prompt, completion), from the same kinds of sources."
    )
    split: str = Field("train", description="Split of a folder or Hub dataset.")
    dataset_config: str | None = Field(None, description="Config (subset) of a folder or Hub dataset.")
    mode: RewardMode = Field(
        RewardConfig.model_fields["mode"].default,
        description="Rewarding mode (as reward.mode of a run): crosslingual needs the English instruction "
        "(a prompt_en column) for non-English rows.",
    )
    language: str | None = Field(
        None, description="Language of every row when the data has no language column (ISO 639-1)."
    )
    language_field: str = Field("lang", description="Column holding each row's language.")
    reward: RewardConfig = Field(default_factory=RewardConfig)
    output: str = Field(description="JSON Lines file of scores (re-running resumes; sharded under accelerate).")

    @model_validator(mode="after")
    def _one_source(self) -> ScoreConfig:
        if (self.pairs is None) == (self.responses is None):
            raise ValueError("give exactly one of pairs or responses")
        if self.language is not None:
            check_language(self.language)
        if not self.output.endswith(".jsonl"):
            raise ValueError("output must be a .jsonl file")
        return self

    @property
    def source(self) -> str:
        return self.pairs if self.pairs is not None else str(self.responses)


ExportWhat = Literal["pairs", "generations", "rewards", "model"]


class ExportConfig(StrictModel):
    """`icr export`: one output of a run's iteration as a Hugging Face dataset or model folder."""

    cli_flags: ClassVar[dict[str, str]] = {}  # dashed: --push-to-hub, --run-dir (or RUN_DIR)

    run_dir: str = Field(description="The run folder (<output_dir>/<name>); also the command's argument RUN_DIR.")
    what: ExportWhat = Field("pairs", description="What to export.")
    iteration: int = Field(0, ge=0, description="Iteration t (model: π^{t+1}, trained in iteration t).")
    to: str = Field(description="Folder to write (created; an existing non-empty folder is refused).")
    eval: str | None = Field(
        None, description="An `icr eval` output folder whose results.json adds the model's win rates to its card."
    )
    push_to_hub: str | None = Field(
        None, description="Also upload the folder to this Hub repo (org/name) with huggingface_hub.upload_folder."
    )
    private: bool = Field(False, description="Create the Hub repo private (with --push-to-hub).")


class PlanEvalConfig(StrictModel):
    """What `icr eval` would do after the run, for `icr plan` to count (the defaults are `icr eval`'s)."""

    prompts: str | None = Field(
        None,
        description="X-AlpacaEval root or prompts folder, to count `icr eval`'s "
        "judge calls (e.g. ../shared/data/x-alpacaeval) [default: not counted].",
    )
    languages: Languages = Field(EVAL_LANGUAGES, description="Languages `icr eval` would judge.")
    models: int | None = Field(
        None, ge=1, description="Models evaluated [default: iterations + 1, i.e. π^0 … π^T as `icr eval --run-dir`]."
    )
    limit: int | None = Field(None, ge=1, description="As `icr eval --limit`.")
    max_new_tokens: int = Field(
        PAPER_EVAL_DECODING["max_new_tokens"], ge=1, description="As `icr eval --max-new-tokens`."
    )
    order: JudgeOrder = Field(
        JudgeConfig.model_fields["order"].default, description="As `icr eval --judge-order` (both = twice the calls)."
    )
    price_input: float = Field(
        10.0,
        ge=0,
        description="Judge price per million input tokens, USD (default: "
        "gpt-4-1106-preview's list price, the paper's judge).",
    )
    price_output: float = Field(30.0, ge=0, description="Judge price per million output tokens, USD.")


class PlanConfig(StrictModel):
    """`icr plan`: what to measure the run's config with, and what else to count. The run itself is
    the `RunConfig` of `--config` and its flags."""

    cli_flags: ClassVar[dict[str, str]] = {
        "output": "plan-output",
        "eval.order": "judge-order",
        "eval.price_input": "price-input",
        "eval.price_output": "price-output",
    }

    tokenizer: str | None = Field(
        None, description="Tokenizer to measure prompts with [default: models.policy's]; only a tokenizer is loaded."
    )
    processes: int = Field(
        1, ge=1, description="Data-parallel training processes (`accelerate launch --num_processes`)."
    )
    output: str | None = Field(
        None, description="Where to write the plan as JSON [default: <output_dir>/<name>/plan.json]."
    )
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of one GPU, for the projected memory per stage.")
    gpus_per_node: int = Field(8, ge=1, description="GPUs of one node, for the projected memory per stage.")
    nodes: int = Field(1, ge=1, description="Nodes, for the projected memory per stage.")
    policy_params: int | None = Field(
        None,
        ge=1,
        description="Parameters of the policy (and reference) when their safetensors headers cannot be read "
        "here, e.g. 8030261248 for Llama-3-8B [default: from the headers].",
    )
    eval: PlanEvalConfig = Field(default_factory=PlanEvalConfig)
