"""An object that lives in a child process, called from this one: `InChildProcess`.

Why: vLLM takes a share of GPU memory (90% by default) when its engine starts and does not reliably
give it back while the process lives, so a reward stage that loads two scoring models after a vLLM
generate in the same process runs out of memory on one GPU. Built in a child process, the engine
and everything it holds go away when the stage closes it, as the process exits.

The child is started with `spawn` (a fresh interpreter: CUDA cannot be used in a forked child), builds
the object from `factory(*args)`, then answers method calls sent over a pipe until it is closed. The
caller's side of the work (files, barriers across launched processes) stays in the calling process.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any


class ChildProcessError(RuntimeError):
    """The child failed (the message holds its traceback) or died without answering."""


def _serve(connection, factory: Callable, args: tuple) -> None:
    try:
        target = factory(*args)
        connection.send((True, None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        connection.send((False, traceback.format_exc()))
        return
    while True:
        message = connection.recv()
        if message is None:
            return
        name, call_args, call_kwargs = message
        try:
            connection.send((True, getattr(target, name)(*call_args, **call_kwargs)))
        except BaseException:  # noqa: BLE001
            connection.send((False, traceback.format_exc()))


class InChildProcess:
    """`factory(*args)` built in a spawned child; `proxy.method(...)` runs `method` there and returns
    its (picklable) result. `close()` (or leaving a `with` block) ends the child."""

    def __init__(self, factory: Callable, *args: Any, description: str = "child process"):
        context = multiprocessing.get_context("spawn")
        self._description = description
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, factory, args), name=description)
        self._process.start()  # not a daemon: vLLM starts processes of its own
        child_end.close()
        self._receive()

    def _receive(self) -> Any:
        try:
            ok, value = self._connection.recv()
        except (EOFError, ConnectionError):
            self._process.join()
            raise ChildProcessError(f"{self._description} exited (code {self._process.exitcode}) "
                                    "without an answer") from None
        if not ok:
            self.close()
            raise ChildProcessError(f"{self._description} failed:\n{value}")
        return value

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self._process.is_alive():
            raise ChildProcessError(f"{self._description} is not running (closed, or exited with code "
                                    f"{self._process.exitcode})")
        try:
            self._connection.send((name, args, kwargs))
            return self._receive()
        except KeyboardInterrupt:
            self.close(force=True)
            raise

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    def close(self, force: bool = False) -> None:
        """End the child: asked to exit, or terminated if `force` or if it does not exit within a minute."""
        if self._process.is_alive() and not force:
            try:
                self._connection.send(None)
            except (BrokenPipeError, ConnectionError):
                pass
            self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._connection.close()

    def __enter__(self) -> InChildProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close(force=exc[0] is not None)
