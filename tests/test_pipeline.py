"""The run directory: stages recorded in the manifest, byte-identical resumption, refused config changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import icr.core.models
import icr.engines.sampling.hf
import icr.runtime.rundir
import icr.stages.generate
import icr.stages.reward
from helpers import LANGS, run_config
from icr.config import ConfigError, load_config
from icr.config.run import RUN_SECTIONS
from icr.core.io import read_json, read_jsonl
from icr.pipeline import run_stage
from icr.runtime.rundir import RunDir
from icr.stages import STAGES


def output_files(root: Path) -> dict[str, bytes]:
    it = root / "iter_0"
    files = [it / "generations" / f"{lang}.jsonl" for lang in LANGS]
    files += [it / "rewards" / f"{lang}.jsonl" for lang in LANGS]
    files += [it / "pairs.jsonl", it / "pairs_stats.json"]
    return {str(f.relative_to(root)): f.read_bytes() for f in files}


def finished(root: Path) -> set[str]:
    path = root / "manifest.json"
    return set(read_json(path)["stages"]) if path.exists() else set()


def run_three(cfg):
    for stage in ("generate", "reward", "pairs"):
        run = run_stage(cfg, stage)
    return run


@pytest.fixture(scope="module")
def reference_run(tiny_dir, tiny_ref_dir, tmp_path_factory):
    """An uninterrupted generate → reward → pairs run."""
    out = tmp_path_factory.mktemp("runs")
    cfg = run_config(out, tiny_dir, tiny_ref_dir, "full")
    run = run_three(cfg)
    return cfg, run.root, output_files(run.root)


def fail_after(k: int, func):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        if calls["n"] >= k:
            raise KeyboardInterrupt("simulated crash")
        calls["n"] += 1
        return func(*args, **kwargs)

    return wrapped


def test_uninterrupted_run_outputs(reference_run):
    cfg, root, files = reference_run
    gens = {lang: read_jsonl(root / "iter_0" / "generations" / f"{lang}.jsonl") for lang in LANGS}
    assert all(len(v) == 3 for v in gens.values())
    assert [r["id"] for r in gens["es"]] == [r["id"] for r in gens["en"]]
    for lang in LANGS:
        for r in gens[lang]:
            assert r["lang"] == lang and len(r["responses"]) == 2
    rewards = read_jsonl(root / "iter_0" / "rewards" / "es.jsonl")
    assert all(
        r["reward_prompt"] == "Please answer the following instruction using only Spanish, unless explicitly "
        f"instructed to respond in a different language.\n\n{r['prompt_en']}"
        for r in rewards
    )
    assert all(len(r["reward"]) == 2 for r in rewards)
    pairs = read_jsonl(root / "iter_0" / "pairs.jsonl")
    stats = read_json(root / "iter_0" / "pairs_stats.json")
    assert set(stats) == set(LANGS)
    assert len(pairs) == sum(s["pairs"] for s in stats.values()) > 0
    for lang, s in stats.items():  # off-language counts and the off-vs-all comparison, whatever the setting
        assert s["off_language_chosen"] == sum(not p["chosen_in_language"] for p in pairs if p["lang"] == lang)
        assert s["language_filter_effect"]["pairs_off"] == s["pairs"]  # this run is the 'off' setting
    manifest = read_json(root / "manifest.json")
    assert {"iter_0/generate", "iter_0/reward", "iter_0/pairs"} <= set(manifest["stages"])
    assert all(e["status"] == "done" for e in manifest["stages"].values())
    assert manifest["stages"]["iter_0/generate"]["records"] == {"en": 3, "es": 3}
    assert load_config(root / "config.yaml") == cfg


def test_interrupted_and_resumed_run_is_byte_identical(reference_run, tiny_dir, tiny_ref_dir, tmp_path, monkeypatch):
    _, _, want = reference_run
    cfg = run_config(tmp_path, tiny_dir, tiny_ref_dir, "resumed")
    # generation crashes after 4 of the 6 prompts (en done, es one of three)
    hf_generator = icr.engines.sampling.hf.HFGenerator
    monkeypatch.setattr(hf_generator, "sample_batch", fail_after(4, hf_generator.sample_batch))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, "generate")
    root = cfg.run_dir
    assert len(read_jsonl(root / "iter_0" / "generations" / "es.jsonl")) == 1
    assert "iter_0/generate" not in finished(root)
    monkeypatch.undo()
    run_stage(cfg, "generate")
    # scoring crashes after one chunk of 2 prompts (reward.batch_prompts=2)
    monkeypatch.setattr(icr.stages.reward, "reward_records", fail_after(1, icr.stages.reward.reward_records))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, "reward")
    assert len(read_jsonl(root / "iter_0" / "rewards" / "en.jsonl")) == 2
    assert "iter_0/reward" not in finished(root)
    monkeypatch.undo()
    run_stage(cfg, "reward")
    run_stage(cfg, "pairs")
    assert output_files(root) == want


@pytest.mark.parametrize("stage,lang", [("generate", "es"), ("reward", "en")])
def test_truncated_stage_file_resumes_byte_identical(reference_run, tmp_path, stage, lang):
    """A killed writer leaves k lines and half a line, and no manifest entry: the stage resumes."""
    cfg, root, want = reference_run
    copy_root = tmp_path / "copy"
    shutil.copytree(root, copy_root)
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path), "name": "copy"})
    folder = {"generate": "generations", "reward": "rewards"}[stage]
    path = copy_root / "iter_0" / folder / f"{lang}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][: len(lines[1]) // 2], encoding="utf-8")
    manifest = read_json(copy_root / "manifest.json")
    later = ("generate", "reward", "pairs")[("generate", "reward", "pairs").index(stage) :]
    for s in later:
        del manifest["stages"][f"iter_0/{s}"]
    (copy_root / "manifest.json").write_text(json.dumps(manifest))
    if stage == "generate":  # later outputs of the crashed run are stale
        shutil.rmtree(copy_root / "iter_0" / "rewards")
    for s in later:
        run_stage(cfg, s)
    assert output_files(copy_root) == want


def test_rerunning_a_finished_stage_does_nothing(reference_run, tmp_path, monkeypatch):
    cfg, root, want = reference_run
    copy_root = tmp_path / "again"
    shutil.copytree(root, copy_root)
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path), "name": "again"})
    mtimes = {p: p.stat().st_mtime_ns for p in copy_root.rglob("*.json*") if p.name != "manifest.json"}

    def boom(*args, **kwargs):
        raise AssertionError("a finished stage loaded a model")

    monkeypatch.setattr(icr.core.models, "load_model", boom)
    monkeypatch.setattr(icr.stages.generate, "generate_language", boom)
    monkeypatch.setattr(icr.stages.reward, "reward_language", boom)
    for stage in ("generate", "reward", "pairs"):
        run_stage(cfg, stage)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert output_files(copy_root) == want


@pytest.mark.parametrize(
    "change,stage",
    [
        ({"generate.temperature": 0.5}, "generate"),
        ({"seed": 7}, "generate"),
        ({"models.reference": "embedded:smollm2-135m-instruct"}, "generate"),  # the whole models section is hashed
        ({"reward.beta": 0.2}, "reward"),
        ({"pairs.min_margin": 0.3}, "pairs"),
    ],
)
def test_finished_stage_with_changed_config_is_refused(reference_run, tmp_path, change, stage):
    cfg, root, want = reference_run
    copy_root = tmp_path / "changed"
    shutil.copytree(root, copy_root)
    original = load_config(copy_root / "config.yaml")
    changed = load_config(copy_root / "config.yaml", {"output_dir": str(tmp_path), "name": "changed", **change})
    with pytest.raises(ConfigError, match=f"iter_0/{stage}") as err:
        run_stage(changed, stage)
    for key, value in change.items():  # each changed field, with its recorded and its new value
        recorded = original
        for part in key.split("."):
            recorded = getattr(recorded, part)
        assert f"{key}: {recorded!r} → {value!r}" in str(err.value)
    assert output_files(copy_root) == want
    # the run's config.yaml still describes the results it holds (apart from where the copy lives)
    kept = load_config(copy_root / "config.yaml").model_copy(
        update={"name": original.name, "output_dir": original.output_dir}
    )
    assert kept == original, "a refused config overwrote the run's config.yaml"


def test_unchanged_sections_do_not_block_later_stages(reference_run, tmp_path):
    """Changing only `pairs` leaves generate and reward valid; the pairs stage alone is refused."""
    cfg, root, _ = reference_run
    copy_root = tmp_path / "pairs-only"
    shutil.copytree(root, copy_root)
    changed = load_config(
        root / "config.yaml", {"output_dir": str(tmp_path), "name": "pairs-only", "pairs.min_margin": 0.3}
    )
    run = RunDir(changed)
    assert run.is_done(0, STAGES["generate"]) and run.is_done(0, STAGES["reward"])
    with pytest.raises(ConfigError):
        run.is_done(0, STAGES["pairs"])


def test_other_seed_other_samples_and_manifest_records_versions_and_config_hash(
    reference_run, tiny_dir, tiny_ref_dir, tmp_path
):
    """Same config and seed in another folder gives the same bytes (the resumed run above is such a
    run); another seed must give other samples, and the manifest says what produced the files."""
    from importlib import metadata

    cfg, root, _ = reference_run
    manifest = read_json(root / "manifest.json")
    for lib in ("icr", "torch", "transformers", "trl", "pydantic"):
        assert manifest["versions"][lib] == metadata.version(lib)
    assert manifest["versions"]["python"].count(".") == 2
    assert manifest["config_hash"] == cfg.section_hash(*RUN_SECTIONS) == cfg.section_hash(*STAGES["train"].sections)
    for key, entry in manifest["stages"].items():
        assert entry["config_hash"] == cfg.section_hash(*STAGES[key.split("/")[1]].sections)

    other = run_stage(run_config(tmp_path, tiny_dir, tiny_ref_dir, "seed1", seed=1), "generate")
    for lang in LANGS:
        a = read_jsonl(root / "iter_0" / "generations" / f"{lang}.jsonl")
        b = read_jsonl(other.root / "iter_0" / "generations" / f"{lang}.jsonl")
        assert [r["id"] for r in a] == [r["id"] for r in b] and [r["prompt"] for r in a] == [r["prompt"] for r in b]
        assert [r["responses"] for r in a] != [r["responses"] for r in b]
        assert all(x["seed"] != y["seed"] for x, y in zip(a, b))
    assert read_json(other.root / "manifest.json")["config_hash"] != manifest["config_hash"]


def test_translate_mode_translator_is_the_policy_of_the_iteration_unless_set(tmp_path):
    cfg = load_config(
        overrides={
            "reward.mode": "translate",
            "models.policy": "dpo",
            "models.reference": "ref",
            "output_dir": str(tmp_path),
        }
    )
    run = RunDir(cfg)
    assert run.translator_spec(0) == "dpo"  # as released: the policy checkpoint translates
    assert run.translator_spec(1) == str(cfg.run_dir / "iter_0" / "model")
    cfg.models.translator = "mt-model"
    assert run.translator_spec(1) == "mt-model"
