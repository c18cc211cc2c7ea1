"""The project's errors. Every command turns an `IcrError` into one clean line and exit code 1
(a `ConfigError`, a usage error: exit code 2) instead of a traceback."""

from __future__ import annotations


class IcrError(Exception):
    """An error the user can act on; its message says what and where."""


class ConfigError(IcrError, ValueError):
    """A config that does not validate; the message names every offending field."""


class DataError(IcrError, ValueError):
    """Bad input data; the message names the file, the line (or item) and the id."""


class ModelLoadError(IcrError, RuntimeError):
    """A model that cannot be loaded (unknown spec, missing files, refused pickle weights)."""
