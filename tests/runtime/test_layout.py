"""The run directory's paths (`icr.runtime.layout.RunLayout`): the writers and the readers name the
same files, and the layout is the one `docs/usage.md` and the module docstring describe."""

from __future__ import annotations

from pathlib import Path

from icr.config import RunConfig
from icr.runtime import layout as layout_module
from icr.runtime.layout import RunLayout
from icr.runtime.rundir import RunDir
from icr.runtime.status import status_file


def test_every_path_of_an_iteration_is_under_its_folder(tmp_path):
    layout = RunLayout(tmp_path)
    t = 3
    paths = [
        layout.generations_dir(t),
        layout.rewards_dir(t),
        layout.pairs_file(t),
        layout.pairs_stats_file(t),
        layout.training_pairs_file(t),
        layout.status_file(t, "reward"),
        layout.model_dir(t),
        layout.train_metrics_file(t),
    ]
    assert all(p.is_relative_to(tmp_path / "iter_3") for p in paths)
    assert len(set(paths)) == len(paths)
    assert layout.train_metrics_file(t).parent == layout.model_dir(t)
    assert layout.tracking_dir(t) == tmp_path / "tracking" / "iter_3"
    assert RunLayout.stage_key(t, "pairs") == "iter_3/pairs"


def test_the_docstring_names_every_file_the_layout_builds():
    doc = layout_module.__doc__
    for name in (
        "config.yaml",
        "manifest.json",
        ".icr.lock",
        "icr.log",
        "generations/",
        "rewards/",
        "pairs.jsonl",
        "pairs_stats.json",
        "train_pairs.jsonl",
        "status/",
        "model/",
        "tracking/",
        "report/",
    ):
        assert name in doc, name


def test_iterations_are_the_numbered_folders_in_order(tmp_path):
    for name in ("iter_10", "iter_2", "iter_x", "iterate"):
        (tmp_path / name).mkdir()
    (tmp_path / "iter_5").write_text("a file named like an iteration folder")
    assert RunLayout(tmp_path).iterations() == [2, 10]


def test_the_run_directory_and_the_status_files_use_the_layout(tmp_path):
    run = RunDir(RunConfig(name="r", output_dir=str(tmp_path)))
    layout = RunLayout(run.root)
    assert run.root == Path(tmp_path) / "r"
    assert run.manifest_file == layout.manifest_file
    assert run.pairs_file(1) == layout.pairs_file(1) and run.model_dir(0) == layout.model_dir(0)
    assert status_file(run.root, 1, "train") == layout.status_file(1, "train")
