"""User-facing errors: the CLI prints them as one line and exits non-zero, with no traceback."""

from __future__ import annotations


class EdgestemError(Exception):
    """An error caused by the user's input (data, config, environment), not by a bug.

    The message must say what is wrong and what to do, on one line.
    """

    exit_code = 2


class ConfigError(EdgestemError):
    """Invalid configuration: unknown key, wrong type, out-of-range value."""


class DataError(EdgestemError):
    """Unreadable, corrupt or unsuitable data: wrong rank, NaN, negative intensities, mismatched shapes."""


class ToolMissingError(EdgestemError):
    """An optional dependency or external tool (rosettasciio, g++, Vivado) is not installed."""
