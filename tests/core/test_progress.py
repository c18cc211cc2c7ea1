"""Progress for long jobs: periodic plain lines (stage, done/total, rate, ETA) off a terminal,
bars on one, nothing with --quiet."""

from __future__ import annotations

import logging

import pytest

import icr.core.progress
from icr.core.progress import (
    LogProgress,
    configure,
    format_duration,
    progress,
    progress_line,
)


@pytest.fixture(autouse=True)
def _restore_settings():
    before = (icr.core.progress.SETTINGS.mode, icr.core.progress.SETTINGS.interval_s)
    yield
    configure(*before)


def test_log_lines_come_every_interval_with_rate_and_eta(caplog):
    clock = iter([0.0, 10.0, 31.0, 45.0, 62.0, 70.0]).__next__
    caplog.set_level(logging.INFO, logger="icr.core.progress")
    bar = LogProgress(100, "generate es", "prompt", interval_s=30.0, clock=clock)
    for _ in range(4):  # at t = 10, 31, 45, 62: lines at 31 and 62 only
        bar.update(10)
    bar.close()  # t = 70: the final line
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "generate es: 20/100 prompt (20.0%) | 0.645 prompt/s | ETA 2m04s",
        "generate es: 40/100 prompt (40.0%) | 0.645 prompt/s | ETA 1m33s",
    ]  # the final line would repeat the last count: not written
    bar = LogProgress(3, "train", "step", interval_s=30.0, clock=iter([0.0, 1.0, 2.0]).__next__)
    bar.update(2)
    bar.close()
    assert caplog.records[-1].getMessage() == "train: 2/3 step (66.7%) | 1 step/s | ETA 1s"


def test_durations_and_unknown_eta():
    assert [format_duration(s) for s in (5, 65, 3 * 3600 + 125)] == ["5s", "1m05s", "3h02m"]
    assert progress_line("train", 0, 10, "step", 5.0).endswith("ETA ?")


@pytest.mark.parametrize("mode,kind", [("log", "LogProgress"), ("none", "NoProgress"), ("bar", "BarProgress")])
def test_configured_mode_picks_the_reporter(mode, kind):
    configure(mode, 1.0)
    with progress(3, "reward en", "prompt") as bar:
        bar.update(3)
    assert type(bar.reporter).__name__ == kind and bar.reporter.n == 3


def test_auto_writes_lines_when_stderr_is_not_a_terminal(caplog, capsys):
    configure("auto", 0.0)
    caplog.set_level(logging.INFO, logger="icr.core.progress")
    with progress(2, "pairs", "lang") as bar:  # pytest's captured stderr is not a TTY
        bar.update(2)
    assert type(bar.reporter).__name__ == "LogProgress"
    assert any("pairs: 2/2 lang (100.0%)" in r.getMessage() for r in caplog.records)
    assert "\r" not in capsys.readouterr().err  # no redrawn bar in a log file


def test_quiet_cli_flag_turns_progress_off(monkeypatch):
    from click.testing import CliRunner

    from icr.cli import main

    result = CliRunner().invoke(main, ["--quiet", "config"], catch_exceptions=False)
    assert result.exit_code == 0 and icr.core.progress.SETTINGS.mode == "none"
    result = CliRunner().invoke(main, ["--progress", "log", "--log-every", "5", "config"], catch_exceptions=False)
    assert (icr.core.progress.SETTINGS.mode, icr.core.progress.SETTINGS.interval_s) == ("log", 5.0)
