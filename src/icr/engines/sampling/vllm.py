"""The vLLM sampling backend (GPU): one `llm.generate` call per chunk, a seed per prompt."""

from __future__ import annotations

from collections.abc import Callable

from icr.config import ModelsConfig, SamplingConfig
from icr.config.vllm import check_vllm_args
from icr.core.chat import end_of_turn_ids, ensure_chat_template, prompt_ids
from icr.core.models import LoadedModel, refuse_pickle, resolve_model_path
from icr.engines.sampling.base import Generator, Sample


class VLLMGenerator:
    """vLLM backend (GPU): one `llm.generate` call per chunk with all of its prompts, n samples each,
    a seed per prompt (so a prompt's samples do not depend on the chunking), stop at end-of-turn, prefix
    caching on (the n samples share the prompt's cache). Its backend entry is `isolated`: the drivers
    run it in a child process, since vLLM keeps its share of GPU memory
    (`gpu_memory_utilization`) while its process lives."""

    def __init__(
        self,
        model_path: str,
        config: SamplingConfig,
        dtype: str = "auto",
        trust_remote_code=False,
        allow_pickle: bool = False,
        **engine_options,
    ):
        refuse_pickle(model_path, allow_pickle)  # vLLM loads the weights itself: refuse pickle files first
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise RuntimeError("backend vllm needs vLLM: pip install 'icr[vllm]' (GPU machines)") from None
        self._params = SamplingParams
        self.config = config
        executor = {"distributed_executor_backend": config.distributed_executor_backend}
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            pipeline_parallel_size=config.pipeline_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enable_prefix_caching=True,
            trust_remote_code=trust_remote_code,
            **(executor if config.distributed_executor_backend else {}),
            **check_vllm_args(config.vllm_args, require_vllm=True),
            **engine_options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        # the same rendering as the HF backend's (`icr.core.models.load_model`): a template-less
        # tokenizer gets the plain template here too, so both backends sample from the same prompt
        ensure_chat_template(self.tokenizer)
        self.stop_ids = end_of_turn_ids(self.tokenizer)

    def prompt_length(self, instruction: str) -> int:
        return len(prompt_ids(self.tokenizer, instruction))

    def sample_batch(self, instructions: list[str], n: int, seeds: list[int]) -> list[list[Sample]]:
        cfg = self.config
        params = [
            self._params(
                n=n,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_new_tokens,
                seed=seed,
                stop_token_ids=self.stop_ids,
            )
            for seed in seeds
        ]
        requests = [{"prompt_token_ids": prompt_ids(self.tokenizer, text)} for text in instructions]
        results = self.llm.generate(requests, params, use_tqdm=False)
        return [[self._sample(o) for o in result.outputs] for result in results]

    def _sample(self, output) -> Sample:
        tokens = list(output.token_ids)
        if tokens and output.finish_reason == "stop" and tokens[-1] in self.stop_ids:
            tokens = tokens[:-1]  # as the HF backend counts: end-of-turn excluded
        return Sample(output.text.strip(), len(tokens), output.finish_reason == "length")


def _vllm_backend(
    spec: str, config: SamplingConfig, models: ModelsConfig, load: Callable[[str], LoadedModel]
) -> Generator:
    return VLLMGenerator(
        resolve_model_path(spec),
        config,
        dtype=models.dtype,
        trust_remote_code=models.trust_remote_code,
        allow_pickle=models.allow_pickle,
    )
