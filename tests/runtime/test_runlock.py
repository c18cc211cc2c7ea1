"""One writer per run directory (`icr.runtime.runlock`): a live holder refuses a second writer, naming it;
the lock of a killed holder is taken over with a warning; without flock the holder line decides."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

import icr.runtime.runlock
from icr.core.faults import RunDirInUse
from icr.runtime.layout import LOCK_NAME
from icr.runtime.runlock import run_lock

HOLD = (
    "import sys, time; from pathlib import Path; from icr.runtime.runlock import RunLock; "
    "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(RunDirInUse) as err, run_lock(tmp_path / "run"):
        pass
    message = str(err.value)
    assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in message
    assert "-c" in message and str(tmp_path / "run") in message


def test_lock_of_a_killed_holder_is_taken_over_with_a_warning(tmp_path, holder, caplog):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with caplog.at_level(logging.WARNING, logger="icr.runtime.runlock"), run_lock(tmp_path / "run") as lock:
        record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and lock.fd is not None
    assert any(f"taking over the lock left by pid {holder.pid}" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released: removed


def test_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path):
    root = tmp_path / "run"
    with run_lock(root) as outer:
        with run_lock(root) as inner:
            assert inner is outer
        assert (root / LOCK_NAME).exists()
        proc = subprocess.run(
            [sys.executable, "-c", HOLD, str(root)],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert proc.returncode != 0 and "RunDirInUse" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert not (root / LOCK_NAME).exists()
    with run_lock(root):  # taken again without a warning or an error
        pass


def test_without_flock_the_holder_line_decides(tmp_path, monkeypatch, caplog):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(icr.runtime.runlock.fcntl, "flock", no_flock)
    root = tmp_path / "run"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = root / LOCK_NAME
    for holder, refused in [
        ({"host": socket.gethostname(), "pid": os.getppid()}, "in use by another"),
        ({"host": "elsewhere", "pid": 1}, f"if that process is gone, delete {lock_file}"),
    ]:
        lock_file.write_text(json.dumps({**holder, "started": "2025-01-01T00:00:00"}))
        with pytest.raises(RunDirInUse, match=refused), run_lock(root):
            pass
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "then"}))
    with caplog.at_level(logging.WARNING, logger="icr.runtime.runlock"), run_lock(root):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert any(f"left by pid {dead.pid}" in r.getMessage() for r in caplog.records)
