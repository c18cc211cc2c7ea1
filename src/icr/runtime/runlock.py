"""One writer per run directory: an exclusive lock held for the whole command.

The lock is `RUN/.icr.lock`, locked with `flock` and holding a JSON line that names its holder
(host, pid, start time, command, number of processes). The kernel (or the NFS server) drops an
`flock` when its process dies, so a lock that can be taken while the file still names a holder
was left by a process that died without releasing it: it is taken over with a warning. A holder
that releases it empties and removes the file.

The processes of one `accelerate launch` are one writer: the main process takes the lock and
tells the others (a broadcast) whether it got it, so that all of them start, or all of them stop
with the same message. On a file system without `flock`, the holder line is the lock: a holder on
this host whose pid is gone is stale; one on another host must be removed by hand.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from icr.core.distributed import current_shard
from icr.core.faults import RunDirInUse
from icr.runtime.layout import RunLayout

log = logging.getLogger(__name__)

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_HELD: dict[str, RunLock] = {}  # taken by this process: a nested command on the same run shares it


def command_line() -> str:
    """This process's command as its user typed it: `icr run ...`, or `python -m icr.cli run ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name.removesuffix('.__main__')}" if spec else Path(sys.argv[0]).name
    return " ".join([program, *sys.argv[1:]])


def holder_record(world: int = 1) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line()[:300],
        "processes": world,
    }


def describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')} "
        f"({holder.get('command', '?')})"
    )


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        holder = json.loads(raw)
        return holder if isinstance(holder, dict) else None
    except ValueError:
        return None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


class RunLock:
    """The lock of one run directory, held by this process (see the module docstring)."""

    def __init__(self, root: Path, world: int = 1):
        self.root = Path(root)
        self.path = RunLayout(self.root).lock_file
        self.world = world
        self.fd: int | None = None
        self.users = 0

    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd) or {}
                os.close(fd)
                raise self._in_use(holder) from None
            except OSError as err:
                os.close(fd)
                if err.errno not in _NO_FLOCK:
                    raise
                self._acquire_without_flock()
                return
            try:  # the file may have been removed by a holder releasing it meanwhile: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        self._take_over(_read_holder(fd))

    def _in_use(self, holder: dict) -> RunDirInUse:
        return RunDirInUse(
            f"{self.root} is in use by another icr process: {describe(holder)}. Two writers would corrupt the "
            "run: wait for it to finish or stop it (it resumes later), or use another run name"
        )

    def _take_over(self, stale: dict | None) -> None:
        if stale:
            log.warning(
                "%s: taking over the lock left by %s, which ended without releasing it", self.root, describe(stale)
            )
        data = (json.dumps(holder_record(self.world)) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, data)
        os.fsync(self.fd)

    def _acquire_without_flock(self) -> None:
        """The holder line alone (file systems without flock): a dead pid on this host is stale."""
        try:
            holder = json.loads(self.path.read_text()) if self.path.exists() else None
        except ValueError:
            holder = None
        if holder and (holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid"))):
            if holder.get("host") != socket.gethostname():
                raise RunDirInUse(
                    str(self._in_use(holder)) + f"; this file system has no flock: if that process "
                    f"is gone, delete {self.path}"
                )
            raise self._in_use(holder)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._take_over(holder)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            self.path.unlink(missing_ok=True)  # while still locked: the next holder locks a new file
        except OSError:
            pass
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None


def _broadcast(value, shard):
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


@contextmanager
def run_lock(root: str | Path, shard=None) -> Iterator[RunLock | None]:
    """Hold the lock of run directory `root` for the block; raise `RunDirInUse` naming the holder
    if another process has it. Re-entrant within a process. Under `accelerate launch` the main
    process takes it and the others follow its verdict."""
    shard = shard or current_shard()
    key = os.path.realpath(root)
    lock = _HELD.get(key)
    refusal = None
    if lock is None and shard.is_main:
        lock = RunLock(Path(root), shard.world)
        try:
            lock.acquire()
        except Exception as err:  # noqa: BLE001  (whatever stops the main process must stop the others)
            refusal, lock = err, None
    if shard.world > 1:
        message = _broadcast(None if refusal is None else str(refusal), shard)
        if message and refusal is None:
            raise RunDirInUse(message)
    if refusal is not None:
        raise refusal
    if lock is not None:
        _HELD[key] = lock
        lock.users += 1
    try:
        yield lock
    finally:
        if lock is not None:
            lock.users -= 1
            if lock.users == 0:
                _HELD.pop(key, None)
                lock.release()
