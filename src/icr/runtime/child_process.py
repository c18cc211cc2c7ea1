"""An object that lives in a child process, called from this one: `InChildProcess`.

Why: vLLM takes a share of GPU memory (90% by default) when its engine starts and does not reliably
give it back while the process lives, so a reward stage that loads two scoring models after a vLLM
generate in the same process runs out of memory on one GPU. Built in a child process, the engine
and everything it holds go away when the stage closes it, as the process exits.

The child is started with `spawn` (a fresh interpreter: CUDA cannot be used in a forked child), builds
the object from `factory(*args)`, then answers method calls sent over a pipe until it is closed. The
caller's side of the work (files, barriers across launched processes) stays in the calling process.

`open_generator` is how the drivers (the generate stage, eval outputs) get a generator: in this
process, or in a child where the backend's entry in `icr.engines.sampling.BACKENDS` is marked `isolated`.
This is driver plumbing: the engines never import it (import-linter contract).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from icr.config import ModelsConfig, SamplingConfig
from icr.core.distributed import local_process
from icr.core.errors import IcrError
from icr.core.models import LoadedModel
from icr.engines.sampling import BACKENDS, make_generator
from icr.engines.sampling.base import Generator
from icr.runtime.placement import engine_environment

log = logging.getLogger(__name__)


class ChildProcessError(RuntimeError):
    """The child failed (the message holds its traceback) or died without answering."""


def _send_failure(connection, error: BaseException) -> None:
    """The traceback, and the error itself when it is one the user can act on (`IcrError`): the
    parent raises that as it is, so the commands' one error handler shows its clean message."""
    text = traceback.format_exc()
    try:
        connection.send((False, (text, error if isinstance(error, IcrError) else None)))
    except Exception:  # noqa: BLE001 - an error that does not pickle: its traceback still says it all
        connection.send((False, (text, None)))


ENVIRONMENT = "__environment__"  # a call that returns the child's values of the named variables


def _serve(connection, factory: Callable, args: tuple) -> None:
    try:
        target = factory(*args)
        connection.send((True, None))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
        _send_failure(connection, error)
        return
    while True:
        message = connection.recv()
        if message is None:
            return
        name, call_args, call_kwargs = message
        try:
            if name == ENVIRONMENT:
                connection.send((True, {variable: os.environ.get(variable) for variable in call_args}))
                continue
            connection.send((True, getattr(target, name)(*call_args, **call_kwargs)))
        except BaseException as error:  # noqa: BLE001
            _send_failure(connection, error)


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class InChildProcess:
    """`factory(*args)` built in a spawned child; `proxy.method(...)` runs `method` there and returns
    its (picklable) result. `close()` (or leaving a `with` block) ends the child. `environment`
    updates the child's environment variables (e.g. its `CUDA_VISIBLE_DEVICES`)."""

    def __init__(
        self,
        factory: Callable,
        *args: Any,
        description: str = "child process",
        environment: dict[str, str] | None = None,
    ):
        context = multiprocessing.get_context("spawn")
        self._description = description
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, factory, args), name=description)
        with _environment(environment or {}):  # a spawned child starts with a copy of os.environ
            self._process.start()  # not a daemon: vLLM starts processes of its own
        child_end.close()
        self._receive()

    def _receive(self) -> Any:
        try:
            ok, value = self._connection.recv()
        except (EOFError, ConnectionError):
            self._process.join()
            raise ChildProcessError(
                f"{self._description} exited (code {self._process.exitcode}) without an answer"
            ) from None
        if not ok:
            self.close()
            text, user_error = value
            if user_error is not None:
                raise user_error from ChildProcessError(f"{self._description}:\n{text}")
            raise ChildProcessError(f"{self._description} failed:\n{text}")
        return value

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self._process.is_alive():
            raise ChildProcessError(
                f"{self._description} is not running (closed, or exited with code {self._process.exitcode})"
            )
        try:
            self._connection.send((name, args, kwargs))
            return self._receive()
        except KeyboardInterrupt:
            self.close(force=True)
            raise

    def environment(self, *variables: str) -> dict[str, str | None]:
        """The child's values of `variables`."""
        return self.call(ENVIRONMENT, *variables)

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    def close(self, force: bool = False) -> None:
        """End the child: asked to exit, or terminated if `force` or if it does not exit within a minute."""
        if self._process.is_alive() and not force:
            with contextlib.suppress(BrokenPipeError, ConnectionError):
                self._connection.send(None)
            self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._connection.close()

    def __enter__(self) -> InChildProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close(force=exc[0] is not None)


def _generator_in_child(spec: str, config: SamplingConfig, models: ModelsConfig) -> Generator:
    """The generator, built in the child: models are loaded there as `models` says."""
    return make_generator(
        spec,
        config,
        models,
        models.load,
    )


@contextmanager
def open_generator(
    spec: str,
    config: SamplingConfig,
    models: ModelsConfig,
    load: Callable[[str], LoadedModel],
    isolated: bool | None = None,
) -> Iterator[Generator]:
    """The generator of `config.backend` for the block: built in this process (`load` loads models,
    e.g. the run's shared pool), or, for a backend marked `isolated` (or `isolated=True`), in a child
    process that loads the model itself and exits when the block ends, with the memory it held."""
    if not (BACKENDS[config.backend].isolated if isolated is None else isolated):
        yield make_generator(spec, config, models, load)
        return
    environment = engine_environment(config)
    if environment:
        log.info(
            "%s generator of local process %d sees GPUs %s",
            config.backend,
            local_process()[0],
            environment["CUDA_VISIBLE_DEVICES"],
        )
    with InChildProcess(
        _generator_in_child, spec, config, models, description=f"{config.backend} generator", environment=environment
    ) as child:
        yield child
