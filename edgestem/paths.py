"""Output checks shared by every command, made before any work starts.

An output must never replace a file the stage reads (its data, its config, a run's checkpoint),
must be of the right kind (a file where a file is written, a directory where a directory is), and
must fit on the disk. One function per question, called by every command in ``edgestem/cli.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from edgestem.errors import EdgestemError

# Files of a run directory that a stage reading the run depends on (besides any *.pt checkpoint).
RUN_FILES = ("checkpoint.pt", "config.yaml", "train.json", "pipeline.json")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when ``a`` and ``b`` name the same file (through links, ``..`` and relative paths)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def protected_by(path: Path, reads: Iterable[str | os.PathLike[str] | None]) -> Path | None:
    """The read input ``path`` would replace, or None.

    ``reads`` holds the stage's input files and run directories; inside a run directory its
    checkpoint (any ``*.pt``), ``config.yaml``, ``train.json`` and ``pipeline.json`` are protected
    (files of its sub-directories only when those are passed as reads themselves).
    """
    for r in reads:
        if r is None:
            continue
        r = Path(r)
        if r.is_dir():
            if path.parent.resolve() == r.resolve() and (path.name in RUN_FILES or path.suffix == ".pt"):
                return path
            continue
        if same_file(path, r):
            return r
    return None


def check_output_file(
    out: str | os.PathLike[str],
    reads: Iterable[str | os.PathLike[str] | None] = (),
    *,
    extra: Iterable[str | os.PathLike[str]] = (),
    option: str = "--out",
) -> Path:
    """Refuse an output file that is a directory, or that (or a file written beside it) is an input.

    ``extra``: the other files the stage writes next to ``out`` (``<out>.json``, ``<out>.png``).
    """
    out = Path(out)
    reads = list(reads)
    if out.is_dir():
        raise EdgestemError(f"{option} {out} is a directory; give a file name, e.g. {out / 'out.h5'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise EdgestemError(f"{option} {out}: cannot create output directory {out.parent}: it is a file")
    for p in [out, *(Path(e) for e in extra)]:
        hit = protected_by(p, reads)
        if hit is not None:
            what = "" if p == out else f" (written beside it as {p})"
            raise EdgestemError(
                f"{option} {out}{what} would replace the input {hit}, which this command reads; "
                "choose another output path"
            )
        if p != out and p.is_dir():
            raise EdgestemError(f"{option} {out}: {p} (written beside it) is a directory; choose another output path")
    return out


def check_output_dir(
    out: str | os.PathLike[str],
    reads: Iterable[str | os.PathLike[str] | None] = (),
    *,
    writes: Iterable[str] = (),
    option: str = "--out",
) -> Path:
    """Refuse an output directory that is an existing file, or whose files ``writes`` would replace an input."""
    out = Path(out)
    reads = list(reads)
    if out.exists() and not out.is_dir():
        hit = protected_by(out, reads)
        if hit is not None:
            raise EdgestemError(f"{option} {out} is the input {hit}, which this command reads; give a new directory")
        raise EdgestemError(f"{option} {out} is a file, not a directory; give a directory (it is created)")
    for name in writes:
        hit = protected_by(out / name, reads)
        if hit is not None:
            raise EdgestemError(
                f"{option} {out}: writing {out / name} would replace the input {hit}, which this command reads; "
                "choose another directory"
            )
    return out


def check_maps_file(
    out: str | os.PathLike[str], reads: Iterable[str | os.PathLike[str] | None] = (), *, option: str = "--out"
) -> Path:
    """A strain maps output (HDF5, with ``<out>.json`` and ``<out>.png`` beside it): checked as above."""
    out = check_output_file(out, reads, extra=[Path(f"{out}.json"), Path(out).with_suffix(".png")], option=option)
    if out.suffix.lower() not in (".h5", ".hdf5", ".hdf"):
        raise EdgestemError(f"{option} {out}: strain maps are written as HDF5; give a name ending in .h5")
    return out


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 kB'`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def check_space(
    out: str | os.PathLike[str],
    nbytes: float,
    what: str = "the output",
    hint: str = "free space or choose another disk",
) -> None:
    """Refuse to start when ``nbytes`` (an estimate of what will be written) cannot fit on the disk of ``out``."""
    out = Path(out)
    try:
        free = shutil.disk_usage(_existing_parent(out.parent if out.suffix else out)).free
    except OSError:
        return
    if nbytes > free:
        raise EdgestemError(
            f"{what} needs about {human_bytes(nbytes)} but only {human_bytes(free)} is free on the disk of {out}; "
            + hint
        )


def available_memory() -> int | None:
    """Bytes of memory available now (None when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: float, what: str, hint: str) -> None:
    """Refuse work whose arrays (``nbytes``) cannot fit in the memory available now."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise EdgestemError(
            f"{what} needs about {human_bytes(nbytes)} of memory but {human_bytes(avail)} is available; {hint}"
        )
