"""Log lines fit a scheduler's log: one plain line per record off a terminal, never wrapped;
library warnings go to the run's log file, not the console; the libraries' bars are off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# A command registered beside the real ones: it opens a run (as `icr run` does, without running a
# stage), logs a long line and a two-line message, and raises a library-style FutureWarning.
PROBE = textwrap.dedent(
    """
    import logging, sys, warnings
    import click
    from icr.cli import main

    @main.command(name="probe")
    @click.argument("out")
    def probe(out):
        from icr.config import RunConfig
        from icr.pipeline import open_run

        with open_run(RunConfig(output_dir=out, name="r")):
            logging.getLogger("icr.probe").info("generate es: " + "x" * 150 + " | ETA 0s")
            logging.getLogger("icr.probe").info("first line\\nsecond line")
            warnings.warn("`old` is deprecated and will be removed in v6", FutureWarning, stacklevel=1)
        logging.getLogger("icr.probe").warning("after the run")

    main(sys.argv[1:], prog_name="icr")
    """
)


def _icr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_log_mode_writes_one_unwrapped_line_per_record_and_warnings_to_the_run_log(tmp_path):
    result = _icr("--progress", "log", "probe", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    long_line = [line for line in lines if "generate es:" in line]
    assert len(long_line) == 1 and long_line[0].endswith("x" * 150 + " | ETA 0s")  # not wrapped at 80
    assert len([line for line in lines if "first line" in line]) == 1
    assert "first line | second line" in result.stderr
    assert len(lines) == 3, lines  # three records, three lines
    assert "FutureWarning" not in result.stderr and "deprecated" not in result.stderr
    log_file = (tmp_path / "r" / "icr.log").read_text(encoding="utf-8")
    assert "FutureWarning" in log_file and "deprecated" in log_file and "x" * 150 in log_file
    assert "after the run" not in log_file  # only while the run is open


def test_verbose_shows_the_warnings_on_the_console(tmp_path):
    result = _icr("-v", "--progress", "log", "probe", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FutureWarning" in result.stderr


def test_library_bars_are_off_in_log_mode_even_when_the_hub_was_imported_first(tmp_path):
    script = textwrap.dedent(
        """
        import huggingface_hub  # imported before the mode is chosen, as the CLI's imports may do
        from icr.core.progress import configure
        configure("log")
        import datasets.utils, tqdm
        from transformers.utils import logging as tl
        print(huggingface_hub.utils.are_progress_bars_disabled(), datasets.utils.are_progress_bars_disabled(),
              tl.is_progress_bar_enabled(), tqdm.tqdm(range(3)).disable)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    for variable in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        env.pop(variable, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "False", "True"]
