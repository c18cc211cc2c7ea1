"""Per-iteration settings (`iteration_overrides`): validation, the config each iteration runs under,
the manifest hashes, the command line, and a two-iteration run that applies them."""

from __future__ import annotations

import pytest

from helpers import LANGS, run_config
from icr.cli.options import parse_value
from icr.config import ConfigError, RunConfig, load_config
from icr.config.run import RUN_HASHED, RUN_SECTIONS
from icr.core.io import read_json, read_jsonl
from icr.pipeline import run_iterations
from icr.runtime.rundir import RunDir
from icr.stages import STAGES
from icr.training.replay import replay_count


def with_overrides(*entries, **fields) -> RunConfig:
    return load_config(overrides={"iterations": 2, **fields, "iteration_overrides": list(entries)})


def test_an_entry_changes_only_its_own_iteration():
    config = with_overrides(
        {"iteration": 1, "set": {"data.rows": [3000, 6000], "pairs": {"max_chosen_score": 500}, "train.replay": 0.5}}
    )
    first, second = config.at_iteration(0), config.at_iteration(1)
    assert (first.data.rows, first.pairs.max_chosen_score, first.train.replay) == (None, None, None)
    assert (second.data.rows, second.pairs.max_chosen_score, second.train.replay) == ([3000, 6000], 500, 0.5)
    assert second.reward == config.reward and second.models == config.models


def test_a_later_entry_for_the_same_iteration_wins():
    config = with_overrides(
        {"iteration": 1, "set": {"train.beta": 0.2, "train.epochs": 2}}, {"iteration": 1, "set": {"train.beta": 0.3}}
    )
    assert (config.at_iteration(1).train.beta, config.at_iteration(1).train.epochs) == (0.3, 2)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"iteration": 1, "set": {"pairs.max_chosen_scor": 500}}, "pairs.max_chosen_scor"),
        ({"iteration": 1, "set": {"train.lora.rank": 4}}, "train.lora.rank"),
        ({"iteration": 1, "set": {"reward.beta": 0.2}}, "reward.beta: cannot be set per iteration"),
        ({"iteration": 1, "set": {"data.languages": ["en"]}}, "data.languages: cannot be set per iteration"),
        ({"iteration": 1, "set": {"train.batch_size": 0}}, "train.batch_size"),
        ({"iteration": 1, "set": {"data.rows": [6000, 3000]}}, "data.rows"),
        ({"iteration": 2, "set": {"train.beta": 0.2}}, "iteration 2 does not exist"),
        ({"iteration": 1, "set": {}}, "sets nothing"),
        ({"iteration": 1, "sets": {"train.beta": 0.2}}, "sets"),
    ],
)
def test_an_invalid_entry_is_an_error_naming_the_field(entry, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        with_overrides(entry)


def stage_hashes(config: RunConfig) -> dict[str, str]:
    return {
        f"iter_{t}/{name}": config.at_iteration(t).section_hash(*stage.sections)
        for t in range(config.iterations)
        for name, stage in STAGES.items()
    }


def test_hashes_change_only_for_the_stages_an_entry_touches():
    plain = stage_hashes(with_overrides())
    pairs = stage_hashes(with_overrides({"iteration": 1, "set": {"pairs.max_chosen_score": 500}}))
    rows = stage_hashes(with_overrides({"iteration": 1, "set": {"data.rows": [1, 3]}}))
    assert {k for k in plain if plain[k] != pairs[k]} == {"iter_1/pairs", "iter_1/train"}
    assert {k for k in plain if plain[k] != rows[k]} == {f"iter_1/{s}" for s in STAGES}
    # the run's hash covers the entries; without entries it is the hash of the sections alone
    config = with_overrides({"iteration": 1, "set": {"pairs.max_chosen_score": 500}})
    assert config.section_hash(*RUN_HASHED) != with_overrides().section_hash(*RUN_HASHED)
    assert with_overrides().section_hash(*RUN_HASHED) == with_overrides().section_hash(*RUN_SECTIONS)


def test_the_command_line_reads_a_yaml_list_of_entries():
    annotation = RunConfig.model_fields["iteration_overrides"].annotation
    value = parse_value("[{iteration: 1, set: {pairs.max_chosen_score: 500, data.rows: [3000, 6000]}}]", annotation)
    config = load_config(overrides={"iterations": 2, "iteration_overrides": value})
    assert config.at_iteration(1).data.rows == [3000, 6000] and config.at_iteration(1).pairs.max_chosen_score == 500


def test_data_rows_is_a_block_of_the_english_order_before_the_limit():
    from icr.core.prompts import load_prompt_set

    every = [p.id for p in load_prompt_set("embedded:demo", ["en"]).by_lang["en"]]
    block = load_prompt_set("embedded:demo", ["en", "es"], rows=[1, 4], limit=2)
    assert [p.id for p in block.by_lang["en"]] == every[1:3] == [p.id for p in block.by_lang["es"]]


@pytest.mark.slow
def test_a_two_iteration_run_applies_each_iteration_its_settings(tiny_dir, tiny_ref_dir, tmp_path):
    """Iteration 1 samples prompts rows 1..2 only, and trains on its pairs plus ⌊0.5 × |P_0|⌋ of P_0."""
    config = run_config(
        tmp_path,
        tiny_dir,
        tiny_ref_dir,
        iterations=2,
        **{"train.batch_size": 1, "train.grad_accum": 1, "train.max_length": 64, "data.limit": None},
        **{"data.rows": [0, 3]},
        iteration_overrides=[{"iteration": 1, "set": {"data.rows": [1, 3], "train.replay": 0.5}}],
    )
    run = run_iterations(config)
    ids = [[r["id"] for r in read_jsonl(run.generations_dir(t) / "en.jsonl")] for t in (0, 1)]
    assert ids[1] == ids[0][1:3] and len(ids[0]) == 3
    own, previous = read_jsonl(run.pairs_file(1)), read_jsonl(run.pairs_file(0))
    trained = read_jsonl(run.iter_dir(1) / "train_pairs.jsonl")
    k = replay_count(0.5, len(previous))
    assert trained[: len(own)] == own and len(trained) == len(own) + k
    assert all(p in previous for p in trained[len(own) :])
    assert not (run.iter_dir(0) / "train_pairs.jsonl").exists()
    manifest = read_json(run.root / "manifest.json")
    assert manifest["stages"]["iter_1/train"]["replay"] == {"own": len(own), "replayed": k}
    assert set(LANGS) == set(read_json(run.pairs_stats_file(1)))
    # resuming under the same config does nothing; RunDir agrees every stage is done
    reopened = RunDir(config)
    assert all(reopened.is_done(t, stage) for t in (0, 1) for stage in STAGES.values())
