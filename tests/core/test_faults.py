"""Faults inside one process: out of memory at chosen sub-batches (`icr.core.oom`), a disk that fills
up mid-write, a stop signal during a write, a diverging loss (`icr.core.faults`), and the exit code the
CLI gives each (`icr.cli.FAULT_EXIT_CODES`)."""

from __future__ import annotations

import errno
import logging
import math
import os
import signal
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import icr.core.faults
import icr.core.io
from icr.config import GenerateConfig, RewardConfig, SamplingConfig
from icr.core.faults import (
    DiskWriteError,
    OutOfMemory,
    Preempted,
    RunDirInUse,
    TrainingDiverged,
    TrainingOutOfMemory,
    divergence_guard,
    stop_on_signals,
    write_section,
)
from icr.core.io import JsonlAppender, read_jsonl, write_json_atomic
from icr.core.oom import OomBackoff
from icr.core.prompts import Prompt
from icr.engines.rewarding import make_strategy
from icr.engines.sampling.hf import HFGenerator
from icr.engines.scoring.scorer import Scorer, score_groups
from icr.eval.outputs import EvalModel, generate_outputs
from icr.stages.generate import generate_language
from icr.stages.reward import reward_language


@contextmanager
def oom_at(module, calls: set[int], min_rows: int = 1):
    """torch.OutOfMemoryError raised by `module`'s forward at the chosen calls (1-based, counting
    calls on at least `min_rows` rows), as a GPU would raise it for a sub-batch that does not fit;
    `hits` counts the errors raised."""
    state = SimpleNamespace(n=0, hits=0)

    def hook(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.shape[0] < min_rows:
            return
        state.n += 1
        if state.n in calls:
            state.hits += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()


GENERATIONS = [
    {
        "id": str(k),
        "lang": "es",
        "prompt": f"Pregunta número {k}: ¿qué es {w}?",
        "responses": [f"{w} es algo {'muy ' * r}interesante." for r in range(4)],
        "n_tokens": [6] * 4,
        "truncated": [False] * 4,
        "seed": k,
    }
    for k, w in enumerate(["el sol", "una bicicleta", "la lluvia", "un río", "el pan"])
]
ENGLISH = {g["id"]: f"Question number {g['id']}: what is it?" for g in GENERATIONS}


def test_out_of_memory_in_scoring_halves_sub_batches_and_writes_identical_records(
    tiny_lm, tiny_ref_lm, tmp_path, caplog
):
    cfg = RewardConfig(batch_prompts=3)
    clean = tmp_path / "clean.jsonl"
    reward_language(
        GENERATIONS,
        ENGLISH,
        clean,
        policy=Scorer.of(tiny_lm, cfg.token_budget),
        reference=Scorer.of(tiny_ref_lm, cfg.token_budget),
        config=cfg,
        strategy=make_strategy(cfg),
    )
    # sub-batches (calls on several rows; prompt passes are one row each): the policy's first one
    # fails, then the first half of it; the reference's second one (its second chunk) fails too
    faulted = tmp_path / "faulted.jsonl"
    policy, reference = Scorer.of(tiny_lm, cfg.token_budget), Scorer.of(tiny_ref_lm, cfg.token_budget)
    with (
        caplog.at_level(logging.WARNING, logger="icr.core.oom"),
        oom_at(tiny_lm.model.get_decoder(), {1, 2}, min_rows=2) as pol,
        oom_at(tiny_ref_lm.model.get_decoder(), {2}, min_rows=2) as ref,
    ):
        reward_language(
            GENERATIONS,
            ENGLISH,
            faulted,
            policy=policy,
            reference=reference,
            config=cfg,
            strategy=make_strategy(cfg),
        )
    assert (pol.hits, ref.hits) == (2, 1)
    assert faulted.read_bytes() == clean.read_bytes()
    # each scorer keeps what it learnt: the policy's retried twice, the reference's once
    assert (policy.backoff.retries, reference.backoff.retries) == (2, 1)
    assert policy.backoff.max_cells < math.inf and reference.backoff.max_cells < math.inf
    assert any(
        "out of memory on 12 rows" in r.getMessage() and "retrying as 6 + 6 rows" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("profile", ["cpu", "cuda"])
def test_out_of_memory_in_scoring_gives_identical_log_probs_under_each_device_profile(tiny_lm, monkeypatch, profile):
    """The CUDA profile (run here on CPU tensors) prefills many prompts per forward and rounds widths
    up: a prefill batch and a sub-batch that run out of memory are split, each part at the widths of
    the whole, and the numbers are those of the unfaulted run (CPU profile: bit for bit)."""
    from helpers import cuda_profile_on_cpu, random_score_groups

    if profile == "cuda":
        cuda_profile_on_cpu(monkeypatch, tiny_lm.model.config.vocab_size)
    groups = random_score_groups(len(tiny_lm.tokenizer))
    clean = score_groups(tiny_lm.model, groups, token_budget=10**6, per_token=True)
    # forwards on several rows: CUDA, the prefill of all 5 prompts, then of the second half (3 prompts);
    # CPU, the one sub-batch of all 16 completions, then its second half
    scorer = Scorer(tiny_lm.model, token_budget=10**6)
    with oom_at(tiny_lm.model.get_decoder(), {1, 3}, min_rows=2) as faults:
        faulted = scorer.score_groups(groups, per_token=True)
    assert faults.hits == 2 and scorer.backoff.retries == 2
    # no state outside the scorer: a fresh one starts without the learnt cap
    assert Scorer(tiny_lm.model, token_budget=10**6).backoff.max_cells == math.inf
    if profile == "cpu":
        assert faulted == clean
        return
    # The CUDA profile's output layer takes scored positions in chunks of rows; a part of a sub-batch
    # shifts the chunk boundaries, and a matmul of other shapes may round otherwise (seen: 1 float32 ulp).
    # A misaligned width or cache would be off by far more.
    for got, want in zip(faulted, clean):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_out_of_memory_on_one_row_is_a_clear_error(tiny_lm, tiny_ref_lm, tmp_path):
    calls = set(range(1, 100))
    with (
        oom_at(tiny_lm.model.get_decoder(), calls),
        pytest.raises(OutOfMemory, match="single row.*reward.token_budget"),
    ):
        reward_language(
            GENERATIONS[:1],
            ENGLISH,
            tmp_path / "r.jsonl",
            policy=Scorer.of(tiny_lm, RewardConfig().token_budget),
            reference=Scorer.of(tiny_ref_lm, RewardConfig().token_budget),
            config=RewardConfig(),
            strategy=make_strategy(RewardConfig()),
        )
    assert read_jsonl(tmp_path / "r.jsonl") == []


def test_back_off_remembers_what_did_not_fit():
    seen = []

    def work(part):
        seen.append(len(part))
        if len(part) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return [x * 10 for x in part]

    backoff = OomBackoff("test", "")
    assert backoff.run(list(range(8)), 100, work) == [x * 10 for x in range(8)]
    assert seen == [8, 4, 2, 2, 4, 2, 2]
    seen.clear()
    assert backoff.run(list(range(5)), 100, work) == [x * 10 for x in range(5)]
    assert seen == [2, 2, 1]  # no failing attempt first: parts of at most half the rows that failed
    assert backoff.run(list(range(5)), 50, lambda p: p) == list(range(5))  # a shorter width fits more rows


PROMPTS = [
    Prompt(str(k), "en", text)
    for k, text in enumerate(
        [
            "Name a colour.",
            "Write one long sentence about the history of the bicycle, please.",
            "Hi",
            "Explain photosynthesis to a child.",
            "Count to three.",
        ]
    )
]


def test_out_of_memory_in_generation_halves_rows_and_writes_identical_records(tiny_lm, tmp_path):
    cfg = GenerateConfig(n=3, max_new_tokens=6, batch_prompts=3)
    clean = tmp_path / "clean.jsonl"
    generate_language(HFGenerator(tiny_lm, cfg), PROMPTS, clean, cfg, seed=0, iteration=0, max_prompt_tokens=512)
    faulted = tmp_path / "faulted.jsonl"
    generator = HFGenerator(tiny_lm, cfg)
    # model calls: 1 = first chunk's prefill (9 rows → 4 + 5 rows), 4 = a decoding step of the 4 rows
    with oom_at(tiny_lm.model, {1, 4}) as faults:
        generate_language(generator, PROMPTS, faulted, cfg, seed=0, iteration=0, max_prompt_tokens=512)
    assert faults.hits == 2 and generator.oom.retries == 2
    assert faulted.read_bytes() == clean.read_bytes()


def test_out_of_memory_in_a_call_sized_to_free_gpu_memory_writes_identical_records(tiny_lm, tmp_path, monkeypatch):
    import icr.engines.sampling.hf

    cfg = GenerateConfig(n=3, max_new_tokens=6, batch_prompts=5)
    # as on a GPU: 2 prompts a call
    monkeypatch.setattr(icr.engines.sampling.hf, "rows_that_fit", lambda model, tokens: 7)
    clean = tmp_path / "clean.jsonl"
    generate_language(HFGenerator(tiny_lm, cfg), PROMPTS, clean, cfg, seed=0, iteration=0, max_prompt_tokens=512)
    generator = HFGenerator(tiny_lm, cfg)
    # a decoding step of the first call's 6 rows fails: 3 + 3 rows, at the call's prompt width
    with oom_at(tiny_lm.model, {4}, min_rows=6) as faults:
        generate_language(
            generator, PROMPTS, tmp_path / "faulted.jsonl", cfg, seed=0, iteration=0, max_prompt_tokens=512
        )
    assert faults.hits == 1 and generator.oom.retries == 1
    assert (tmp_path / "faulted.jsonl").read_bytes() == clean.read_bytes()


def test_out_of_memory_in_eval_generation_gives_identical_outputs(tiny_lm, tmp_path):
    items = [{"id": k, "instruction": p.text, "dataset": "test"} for k, p in enumerate(PROMPTS)]
    sampling = SamplingConfig(temperature=0.6, top_p=0.9, max_new_tokens=6, batch_prompts=4)
    model = EvalModel("tiny", "tiny")
    generate_outputs(HFGenerator(tiny_lm, sampling), model, "en", items, tmp_path / "clean", sampling, 0)
    generator = HFGenerator(tiny_lm, sampling)
    with oom_at(tiny_lm.model, {1, 2}, min_rows=2) as faults:  # 4 rows → 2 (fails) → 1 + 1, then 2 as 1 + 1
        generate_outputs(generator, model, "en", items, tmp_path / "faulted", sampling, 0)
    assert faults.hits == 2 and generator.oom.max_cells < 2 * (6 + 20)
    for name in ("generations.jsonl", "model_outputs.json"):
        assert (tmp_path / "faulted" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


# ---------------------------------------------------------------- full disk


def enospc_after(monkeypatch, nth: int, partial: bool = True):
    """os.write of icr's writers fails with ENOSPC from the nth call on, after writing part of the
    bytes (a disk that fills up in the middle of a write)."""
    real, count = os.write, {"n": 0}

    def write(fd, data):
        count["n"] += 1
        if count["n"] >= nth:
            if partial and len(data) > 1:
                real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(icr.core.faults.os, "write", write)


def test_full_disk_mid_line_leaves_the_earlier_lines_whole(tmp_path, monkeypatch):
    path = tmp_path / "out.jsonl"
    with JsonlAppender(path) as out:
        out.write({"id": "1", "text": "first"})
    enospc_after(monkeypatch, 1)
    with pytest.raises(DiskWriteError) as err, JsonlAppender(path) as out:
        out.write({"id": "2", "text": "second, never whole"})
    message = str(err.value)
    assert str(path) in message and "the disk is full" in message and "free in" in message
    assert path.read_text() == '{"id": "1", "text": "first"}\n'  # the half line is gone, not left for the next


def test_full_disk_during_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    write_json_atomic(path, {"stages": {"a": 1}})
    before = path.read_bytes()
    enospc_after(monkeypatch, 1)
    with pytest.raises(DiskWriteError, match="manifest.json failed: the disk is full"):
        write_json_atomic(path, {"stages": {"a": 1, "b": 2}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left


# ---------------------------------------------------------------- stop signals


def test_sigterm_during_a_write_finishes_the_line_then_stops(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(Preempted, match="SIGTERM"), stop_on_signals(), JsonlAppender(path) as out:
        out.write({"id": "1"})
        with write_section():  # as if the signal came in the middle of writing record 2
            os.kill(os.getpid(), signal.SIGTERM)
            out.write({"id": "2"})
            out.write({"id": "3"})
        out.write({"id": "4"})
    assert read_jsonl(path) == [{"id": "1"}, {"id": "2"}, {"id": "3"}]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_stop_whose_raise_python_ignored_is_acted_on_at_the_next_record(tmp_path, monkeypatch):
    class SignalledDuringGarbageCollection:
        def __del__(self):  # the handler raises in here, and Python prints and ignores the exception
            os.kill(os.getpid(), signal.SIGTERM)

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_type))
    path = tmp_path / "out.jsonl"
    with pytest.raises(Preempted, match="SIGTERM"), stop_on_signals(), JsonlAppender(path) as out:
        SignalledDuringGarbageCollection()
        assert ignored == [Preempted]
        out.write({"id": "1"})
        out.write({"id": "2"})
    assert read_jsonl(path) == [{"id": "1"}]


def test_sigint_outside_a_write_stops_at_once():
    # what was installed before, not Python's default: a shell's background job starts with SIGINT ignored
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Preempted, match="SIGINT"), stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**8):  # a computation; the handler raises between bytecodes
            pass
    assert signal.getsignal(signal.SIGINT) is before


# ---------------------------------------------------------------- divergence


@pytest.mark.parametrize(
    "losses, ratio, match",
    [
        ([0.7, 0.6, float("nan")], 10.0, r"loss is nan at step 3 of 9 \(starting loss 0.7 at step 1\)"),
        ([0.7, float("inf")], None, r"loss is inf at step 2"),
        ([0.7, 0.8, 7.5], 10.0, r"loss 7.5 at step 3 of 9 is above train.max_loss_ratio = 10 × the starting loss 0.7"),
    ],
)
def test_divergence_guard_names_the_step_and_values(losses, ratio, match):
    guard = divergence_guard(ratio, "iter_0/model")
    state = SimpleNamespace(global_step=0, max_steps=9)
    with pytest.raises(TrainingDiverged, match=match):
        for step, loss in enumerate(losses, start=1):
            state.global_step = step
            guard.on_log(None, state, None, logs={"loss": loss})


def test_divergence_guard_lets_a_falling_loss_pass():
    guard = divergence_guard(2.0, "m")
    state = SimpleNamespace(global_step=0, max_steps=5)
    for step, loss in enumerate([0.7, 1.3, 0.2, 0.01], start=1):
        state.global_step = step
        guard.on_log(None, state, None, logs={"loss": loss, "grad_norm": 3.0})


# ---------------------------------------------------------------- exit codes


def invoke_failing(monkeypatch, module, name, fault, args):
    """`icr ARGS` with module.name (what the command calls) raising `fault`."""
    from click.testing import CliRunner

    from icr.cli import main

    def fail(*args, **kwargs):
        raise fault() if callable(fault) else fault

    monkeypatch.setattr(module, name, fail)
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    "fault, code",
    [
        (RunDirInUse("runs/x is in use by another icr process: pid 7"), 3),
        (DiskWriteError("writing runs/x/manifest.json failed: the disk is full"), 4),
        (OutOfMemory("scoring: out of memory on a single row"), 5),
        (TrainingOutOfMemory("training ran out of memory; no model was saved"), 5),
        (TrainingDiverged("training diverged: loss is nan at step 2"), 6),
        (Preempted("SIGTERM"), 75),
    ],
)
def test_each_fault_ends_the_command_with_its_message_and_exit_code(monkeypatch, fault, code):
    import icr.pipeline

    result = invoke_failing(monkeypatch, icr.pipeline, "run_iterations", fault, ["run"])
    assert result.exit_code == code, result.output
    assert f"{fault} [exit code {code}]" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_every_command_has_the_one_fault_handler(monkeypatch):
    import icr.align
    import icr.pipeline

    stage = invoke_failing(monkeypatch, icr.pipeline, "run_stage", DiskWriteError("writing x failed"), ["reward"])
    align = invoke_failing(
        monkeypatch,
        icr.align,
        "align_english",
        TrainingDiverged("loss is inf"),
        ["align-english", "--model", "m", "--data", "d", "--output", "out"],
    )
    assert (stage.exit_code, align.exit_code) == (4, 6), stage.output + align.output


def test_a_signal_during_a_command_ends_it_with_exit_code_75_and_the_handler_is_restored(monkeypatch):
    import icr.pipeline

    def preempted():  # what a stage sees: the signal arrives while it computes
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**8):
            pass
        return Preempted("never raised by hand")

    result = invoke_failing(monkeypatch, icr.pipeline, "run_iterations", preempted, ["run"])
    assert result.exit_code == 75 and "stopped by SIGTERM: every finished record is saved" in result.output
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_help_lists_every_fault_exit_code():
    from click.testing import CliRunner

    from icr.cli import FAULT_EXIT_CODES, main

    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for code, meaning in FAULT_EXIT_CODES.values():
        assert f"{code} {meaning}" in text
