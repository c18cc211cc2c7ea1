"""Generation backends on a GPU's terms, tested on CPU: the vLLM backend's call shape (a fake `vllm`
module), generation in a child process (`icr.runtime.child_process.open_generator`, as vLLM runs inside
`icr run` and `icr eval`), and the HF backend's chunk split by free memory."""

from __future__ import annotations

import sys
import types

import pytest

from icr.config import GenerateConfig, ModelsConfig
from icr.core.errors import ModelLoadError
from icr.core.models import load_model
from icr.core.prompts import Prompt
from icr.engines.sampling import BACKENDS
from icr.engines.sampling import hf as hf_sampling
from icr.engines.sampling.base import prompt_seed
from icr.engines.sampling.hf import HFGenerator
from icr.engines.sampling.vllm import VLLMGenerator
from icr.runtime.child_process import ChildProcessError, InChildProcess, open_generator
from icr.stages.generate import generate_language


def _prompts(lang: str = "es", count: int = 5) -> list[Prompt]:
    texts = ["Dime algo del mar.", "¿Qué es un volcán?", "Escribe un haiku.", "Hola", "Cuenta hasta tres, por favor."]
    return [Prompt(id=f"p{k}", lang=lang, text=texts[k % len(texts)] * (1 + k // len(texts))) for k in range(count)]


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    """A `vllm` module that records the engine's options and every generate call, and answers each
    prompt's n samples from its seed alone (as vLLM's per-request seeded sampling does)."""
    module = types.ModuleType("vllm")
    module.engines, module.calls = [], []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    class LLM:
        def __init__(self, **kwargs):
            module.engines.append(kwargs)

        def get_tokenizer(self):
            return tokenizer

        def generate(self, prompts, params, use_tqdm=True):
            assert isinstance(params, list) and len(params) == len(prompts)  # one SamplingParams per prompt
            module.calls.append((prompts, params))
            eos = tokenizer.eos_token_id
            return [
                types.SimpleNamespace(
                    outputs=[
                        types.SimpleNamespace(
                            text=f" sample {j} of seed {p.seed} after {len(prompt['prompt_token_ids'])} tokens ",
                            token_ids=list(range(3 + j)) + ([eos] if j % 2 == 0 else []),
                            finish_reason="stop" if j % 2 == 0 else "length",
                        )
                        for j in range(p.n)
                    ]
                )
                for prompt, p in zip(prompts, params)
            ]

    module.LLM, module.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_one_call_per_chunk_seed_per_prompt_same_files_whatever_the_chunking(fake_vllm, tiny_dir, tmp_path):
    prompts = _prompts(count=5)
    files = []
    for batch_prompts in (2, 5):
        config = GenerateConfig(n=3, batch_prompts=batch_prompts, backend="vllm", gpu_memory_utilization=0.55)
        fake_vllm.calls.clear()
        generator = VLLMGenerator(str(tiny_dir), config)
        out = tmp_path / f"chunks{batch_prompts}.jsonl"
        records = generate_language(generator, prompts, out, config, seed=7, iteration=1, max_prompt_tokens=1024)
        files.append(out.read_bytes())
        assert [len(prompts_) for prompts_, _ in fake_vllm.calls] == [
            len(prompts[k : k + batch_prompts]) for k in range(0, 5, batch_prompts)
        ]
        params = [p for _, ps in fake_vllm.calls for p in ps]
        assert [p.seed for p in params] == [prompt_seed(7, 1, "es", p.id) for p in prompts]
        assert all(
            p.n == 3 and p.temperature == config.temperature and p.max_tokens == config.max_new_tokens for p in params
        )
        assert [r["response_tokens"] for r in records[:1]] == [[3, 4, 5]]  # end-of-turn not counted
        assert [r["truncated"] for r in records[:1]] == [[False, True, False]]
    assert files[0] == files[1]
    engine = fake_vllm.engines[-1]
    assert engine["enable_prefix_caching"] is True and engine["gpu_memory_utilization"] == 0.55


def test_vllm_renders_prompts_as_the_hf_backend_does_even_without_a_chat_template(fake_vllm, tiny_dir, tokenizer):
    """A tokenizer without a chat template gets the plain template in both backends, so the token
    ids a prompt is sampled from do not depend on the backend."""
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    fake_vllm.LLM.get_tokenizer = lambda self: bare
    generator = VLLMGenerator(str(tiny_dir), GenerateConfig(n=2, backend="vllm"))
    generator.sample_batch(["Dime algo del mar."], 2, [1])
    ((requests, _),) = fake_vllm.calls
    hf_tokenizer = copy.deepcopy(bare)
    from icr.core.chat import ensure_chat_template, prompt_ids

    ensure_chat_template(hf_tokenizer)
    assert requests[0]["prompt_token_ids"] == prompt_ids(hf_tokenizer, "Dime algo del mar.")
    assert "### Instruction" in hf_tokenizer.decode(requests[0]["prompt_token_ids"])


@pytest.mark.slow
def test_generation_in_a_child_process_writes_the_same_bytes(tiny_lm, tiny_dir, tmp_path):
    """The path `icr run` takes with vLLM (a child process that exits with the stage), here with the
    HF backend: its file is byte-identical to the in-process one's."""
    config = GenerateConfig(n=2, max_new_tokens=6, batch_prompts=2)
    prompts = _prompts(count=3)
    inline = tmp_path / "inline.jsonl"
    generate_language(
        HFGenerator(tiny_lm, config), prompts, inline, config, seed=0, iteration=0, max_prompt_tokens=1024
    )
    isolated = tmp_path / "isolated.jsonl"
    with open_generator(str(tiny_dir), config, ModelsConfig(device="cpu"), load_model, isolated=True) as child:
        assert isinstance(child, InChildProcess)
        generate_language(child, prompts, isolated, config, seed=0, iteration=0, max_prompt_tokens=1024)
    assert not child._process.is_alive() and child._process.exitcode == 0
    assert isolated.read_bytes() == inline.read_bytes()


def _broken_factory():
    raise ValueError("no such model")


def _refused_factory():
    raise ModelLoadError("weights refused")


@pytest.mark.slow
def test_child_process_reports_the_failure_and_is_gone():
    with pytest.raises(ChildProcessError, match="no such model"):
        InChildProcess(_broken_factory)
    # An error the user can act on keeps its type, so the CLI shows its one clean line
    with pytest.raises(ModelLoadError, match="weights refused") as caught:
        InChildProcess(_refused_factory)
    assert isinstance(caught.value.__cause__, ChildProcessError) and "_refused_factory" in str(caught.value.__cause__)


def test_hf_chunk_split_by_free_memory_gives_the_same_samples(tiny_lm, monkeypatch):
    config = GenerateConfig(n=2, max_new_tokens=5)
    generator = HFGenerator(tiny_lm, config)
    texts, seeds = [p.text for p in _prompts(count=5)], [11, 12, 13, 14, 15]
    whole = generator.sample_batch(texts, 2, seeds)
    calls = []
    real = generator._sample_rows
    monkeypatch.setattr(
        generator,
        "_sample_rows",  # prompts per call
        lambda enc, rows, **kw: calls.append(len({i for i, _ in rows})) or real(enc, rows, **kw),
    )
    monkeypatch.setattr(hf_sampling, "rows_that_fit", lambda model, tokens: 5)  # 2 prompts × n = 2 a call
    assert generator.sample_batch(texts, 2, seeds) == whole
    assert calls == [2, 2, 1]


def test_rows_that_fit_is_no_limit_off_cuda(tiny_lm):
    assert hf_sampling.rows_that_fit(tiny_lm.model, 1000) is None


def test_only_isolated_backends_get_a_child_process(tiny_lm):
    """The registry flag decides: hf stays in this process (and uses the caller's loader, e.g. the
    run's model pool); vllm is marked isolated."""
    assert not BACKENDS["hf"].isolated and BACKENDS["vllm"].isolated
    with open_generator("tiny", GenerateConfig(n=2), ModelsConfig(), lambda spec: tiny_lm) as generator:
        assert isinstance(generator, HFGenerator) and generator.lm is tiny_lm


def test_vllm_engine_gets_the_parallel_layout_and_the_checked_engine_args(fake_vllm, tiny_dir, monkeypatch):
    import dataclasses

    from pydantic import ValidationError

    @dataclasses.dataclass
    class EngineArgs:  # the fields the check reads, as vLLM's EngineArgs has them
        model: str = ""
        max_model_len: int | None = None
        enforce_eager: bool = False

    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = EngineArgs
    monkeypatch.setitem(sys.modules, "vllm.engine", types.ModuleType("vllm.engine"))
    monkeypatch.setitem(sys.modules, "vllm.engine.arg_utils", arg_utils)
    layout = {"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"}
    config = GenerateConfig(backend="vllm", vllm_args={"max_model_len": 4096, "enforce_eager": True}, **layout)
    VLLMGenerator(str(tiny_dir), config)
    engine = fake_vllm.engines[-1]
    assert {k: engine[k] for k in layout} == layout
    assert engine["max_model_len"] == 4096 and engine["enforce_eager"] is True
    VLLMGenerator(str(tiny_dir), GenerateConfig(backend="vllm"))
    assert "distributed_executor_backend" not in fake_vllm.engines[-1]  # vLLM's own choice
    with pytest.raises(ValidationError, match="'max_model_lenght' is not a vLLM engine argument .*'max_model_len'"):
        GenerateConfig(vllm_args={"max_model_lenght": 4096})
    with pytest.raises(
        ValidationError, match="'tensor_parallel_size' is set by icr: use generate.tensor_parallel_size"
    ):
        GenerateConfig(vllm_args={"tensor_parallel_size": 2})
