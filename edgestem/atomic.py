"""Atomic writes: every artifact appears complete or not at all (temp file in the same folder + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgestem.errors import EdgestemError


def _check_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgestemError(
            f"cannot create output directory {parent}: {exc.strerror}; choose a writable path"
        ) from None
    if not os.access(parent, os.W_OK):
        raise EdgestemError(f"output directory {parent} is not writable; choose a writable path")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: unwinds like Ctrl-C, so every temporary file is removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: int | None = None  # the signal that arrived, kept even if its exception was swallowed


def _on_signal(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM unwinds like SIGINT; both are remembered, so an interrupt that a library swallows
    (an exception raised inside a weakref callback is only printed) still stops the next commit."""
    global _received
    _received = None
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not the main thread: leave the defaults
            signal.signal(sig, _on_signal)


def received_signal() -> int | None:
    """The signal received since :func:`install_signal_handlers` (None: none)."""
    return _received


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived, even one whose exception was swallowed."""
    if _received is not None:
        raise Interrupted(_received)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``.name.tmp-XXXX.h5``) so libraries that dispatch on
    the extension (h5py, numpy) behave as for the final file.
    """
    path = Path(path)
    _check_dir(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
    try:
        yield tmp_path
        check_interrupted()  # never commit after an interrupt, even one a library swallowed
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # name the output, not an unnamed write inside the library
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order, NaN written as null)."""
    return write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths to plain JSON types; non-finite floats to None."""
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
