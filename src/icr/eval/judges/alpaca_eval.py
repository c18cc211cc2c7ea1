"""The paper's judge: alpaca_eval's `weighted_alpaca_eval_gpt4_turbo` annotator, plus one sentence.

The ICR paper's X-AlpacaEval leaderboard (Table 2) comes from alpaca_eval's weighted GPT-4-turbo
annotator, judged by `gpt-4-1106-preview`, with one sentence put at the start of the prompt's
`## Task` section (released: alpaca_eval/src/alpaca_eval/evaluators_configs/
weighted_alpaca_eval_gpt4_turbo_multilingual/alpaca_eval_clf.txt, line 30):

    A good output should be in the same language as the instruction, except when the instruction
    explicitly requests the output in a different language.

Everything else is read from the *installed* alpaca_eval package, never copied: the annotator's
configs.yaml (model, decoding arguments, parser and its arguments), its prompt template, and the
functions that fill the template (`utils.make_prompts`), turn it into chat messages
(`utils.prompt_to_chatml`) and read the verdict (`completion_parsers.logprob_parser`:
P(output_1 better) = p(m) / (p(m) + p(M)) from the first token's top log-probabilities). Requests go
to any OpenAI-compatible endpoint through `icr.eval.judges.openai.OpenAIJudge` (retries, rate limit, key
handling). An endpoint that returns no log-probabilities falls back to the sampled label (m → 1, M → 0).
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from icr.config import JudgeConfig
from icr.eval.judges.base import JudgeError, JudgeRequest
from icr.eval.judges.openai import OpenAIJudge

log = logging.getLogger(__name__)

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
LANGUAGE_REQUIREMENT = (
    "A good output should be in the same language as the instruction, except when the instruction explicitly "
    "requests the output in a different language."
)
TASK_HEADING = "## Task\n\n"


def _alpaca_eval():
    try:
        import alpaca_eval
        from alpaca_eval import completion_parsers, constants, utils
    except ImportError as err:
        raise JudgeError("the alpaca_eval judge needs the alpaca-eval package: pip install alpaca-eval") from err
    return alpaca_eval, constants, utils, completion_parsers


@lru_cache(maxsize=4)
def annotator_config(annotator: str = ANNOTATOR, config_dir: str | None = None) -> dict[str, Any]:
    """The annotator's entry of its configs.yaml in the installed package, with the template text
    (`prompt_text`) and the package version."""
    package, constants, _, _ = _alpaca_eval()
    root = Path(config_dir or constants.EVALUATORS_CONFIG_DIR)
    path = root / annotator / "configs.yaml"
    if not path.exists():
        raise JudgeError(f"alpaca_eval {package.__version__} has no annotator {annotator!r} ({path} missing)")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))[annotator]
    template = root / config["prompt_template"]
    return {
        **config,
        "prompt_text": template.read_text(encoding="utf-8"),
        "prompt_path": str(template),
        "version": package.__version__,
    }


def with_language_requirement(template: str) -> str:
    """The template with LANGUAGE_REQUIREMENT (and a space) at the start of its `## Task` section."""
    if template.count(TASK_HEADING) != 1:
        raise JudgeError(
            "the alpaca_eval prompt template has no single '## Task' section to add the language "
            "requirement to: was the package changed?"
        )
    return template.replace(TASK_HEADING, f"{TASK_HEADING}{LANGUAGE_REQUIREMENT} ", 1)


class AlpacaEvalJudge(OpenAIJudge):
    """alpaca_eval's annotator (installed package) with the paper's language sentence, on any
    OpenAI-compatible endpoint. `first` of a request is alpaca_eval's output_1 (label m)."""

    def __init__(
        self, config: JudgeConfig, annotator: str = ANNOTATOR, config_dir: str | None = None, backoff: float = 1.0
    ):
        self.annotator = annotator_config(annotator, config_dir)
        kwargs = self.annotator["completions_kwargs"]
        super().__init__(config.model_copy(update={"model": config.model or kwargs["model_name"]}), backoff)
        self.top_logprobs = kwargs.get("top_logprobs", self.top_logprobs)
        self.template = with_language_requirement(self.annotator["prompt_text"])
        self.parser_kwargs = self.annotator["completion_parser_kwargs"]
        numerator = self.parser_kwargs["numerator_token"]
        self.labels = (numerator, *[t for t in self.parser_kwargs["denominator_tokens"] if t != numerator])
        self.prompt_version = f"alpaca_eval-{self.annotator['version']}:{annotator}+language"
        self.judge_id = f"alpaca_eval:{self.base_url}:{self.model}:{self.prompt_version}"

    def messages(self, req: JudgeRequest) -> list[dict[str, str]]:
        """alpaca_eval's own filling of the template (`make_prompts`) and chat conversion."""
        import pandas as pd

        _, _, utils, _ = _alpaca_eval()
        row = pd.DataFrame([{"instruction": req.instruction, "output_1": req.first, "output_2": req.second}])
        prompts, _ = utils.make_prompts(row, self.template, batch_size=1)
        return utils.prompt_to_chatml(prompts[0])

    def _payload(self, messages: list[dict[str, str]], logprobs: bool) -> dict[str, Any]:
        """The annotator's decoding arguments (one token, its temperature, top log-probabilities)."""
        kwargs = self.annotator["completions_kwargs"]
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": kwargs.get("max_tokens", 1),
            "temperature": kwargs.get("temperature", 1),
        }
        if logprobs and kwargs.get("logprobs", True):
            payload.update(logprobs=True, top_logprobs=self.top_logprobs)
        return payload

    def weighted_verdict(self, reply: dict[str, Any]) -> float | None:
        """P(output_1 better) by alpaca_eval's `logprob_parser` (which returns 2 − P)."""
        _, _, _, parsers = _alpaca_eval()
        parser = getattr(parsers, self.annotator["fn_completion_parser"])
        try:
            choice = reply["choices"][0]
            value = parser(choice, **{**self.parser_kwargs, "is_binarize": False})[0]
        except (KeyError, IndexError, TypeError, AssertionError, ValueError):
            return None
        return None if value is None or not math.isfinite(value) else 2.0 - float(value)

    def sampled_verdict(self, text: str) -> float | None:
        label = text.strip()
        return 1.0 if label == self.labels[0] else 0.0 if label in self.labels[1:] else None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backend": "alpaca_eval",
            "annotator": ANNOTATOR,
            "alpaca_eval_version": self.annotator["version"],
            "prompt_template": self.annotator["prompt_path"],
            "language_requirement": LANGUAGE_REQUIREMENT,
            "prompt_version": self.prompt_version,
            "verdict_labels": "/".join(self.labels),
        }
