"""Hub specs with revisions, resolved offline from a local Hub cache laid out as huggingface_hub lays it."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import constants
from safetensors.torch import load_file

from helpers import run_config
from icr.core import hub
from icr.core.errors import ConfigError, ModelLoadError
from icr.core.models import fingerprint, load_model, resolve_model_path
from icr.observe.weights import weights_info
from icr.runtime.preflight import model_problem
from icr.runtime.rundir import RunDir
from icr.stages import STAGES

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def cache_snapshot(cache, source, commit, refs=()):
    """Copy a model folder into `cache` as models--org--tiny/snapshots/<commit>, pointed to by `refs`."""
    repo = cache / "models--org--tiny"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_dir, tiny_ref_dir):
    """main and tag v1 at commit a (the tiny policy); commit b (other weights) cached, no ref to it."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "offline", lambda: True)
    hub.hub_snapshot.cache_clear()
    cache_snapshot(cache, tiny_dir, COMMIT_A, refs=("main", "v1"))
    cache_snapshot(cache, tiny_ref_dir, COMMIT_B)
    yield cache
    hub.hub_snapshot.cache_clear()


def test_split_revision():
    assert hub.split_revision("org/name@v1.0") == ("org/name", "v1.0")
    assert hub.split_revision("org/name") == ("org/name", None)


def test_a_revision_resolves_to_its_commits_snapshot_offline(hub_cache):
    assert hub.hub_commit("org/tiny") == COMMIT_A  # main
    assert hub.hub_commit("org/tiny@v1") == COMMIT_A
    assert hub.hub_commit(f"org/tiny@{COMMIT_B}") == COMMIT_B
    folder = resolve_model_path(f"org/tiny@{COMMIT_B}")
    assert folder.endswith(f"snapshots/{COMMIT_B}")
    with pytest.raises(ModelLoadError, match="revision v2 of this Hub model is not in the local cache"):
        resolve_model_path("org/tiny@v2")
    assert "revision v2" in model_problem("models.policy", "org/tiny@v2")
    assert model_problem("models.policy", "org/tiny@v1") is None


def test_a_hub_spec_loads_the_weights_of_its_commit(hub_cache, tiny_ref_dir):
    lm = load_model(f"org/tiny@{COMMIT_B}", device="cpu")
    expected = load_file(tiny_ref_dir / "model.safetensors")
    name = "model.embed_tokens.weight"
    assert lm.model.state_dict()[name].equal(expected[name])
    assert fingerprint(lm.path) != fingerprint(resolve_model_path("org/tiny@v1"))


def test_plan_sizes_a_cached_hub_model_from_its_headers(hub_cache, tiny_lm):
    weights = weights_info("org/tiny@v1")
    assert weights["known"] and weights["params"] == sum(p.numel() for p in tiny_lm.model.parameters())
    assert not weights_info("org/tiny@v2")["known"]


def test_the_manifest_records_the_commit_and_a_moved_revision_refuses_the_resume(hub_cache, tmp_path):
    config = run_config(tmp_path, "org/tiny", f"org/tiny@{COMMIT_B}")
    run = RunDir(config)
    assert run.manifest["hub_commits"] == {"org/tiny": COMMIT_A, f"org/tiny@{COMMIT_B}": COMMIT_B}
    run.mark_done(0, STAGES["generate"])
    (hub_cache / "models--org--tiny" / "refs" / "main").write_text(COMMIT_B)  # main re-pushed
    hub.hub_snapshot.cache_clear()
    with pytest.raises(ConfigError, match=f"org/tiny: {COMMIT_A} → {COMMIT_B}"):
        RunDir(config)
