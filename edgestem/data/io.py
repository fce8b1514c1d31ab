"""Readers and writers of 4D-STEM data, ``(Rx, Ry, Qx, Qy)``, read lazily.

edgestem's own layout is HDF5:

* ``/data``: float32 ``(Rx, Ry, Qx, Qy)``, chunked one pattern per chunk;
* ``/labels/exx``, ``/labels/eyy``, ``/labels/exy`` (fractions) and ``/labels/theta`` (degrees),
  each ``(Rx, Ry)``, when the data are simulated;
* root attributes: ``edgestem_version``, ``config`` (YAML), ``seed``, ``noise`` (JSON), lattice
  constants, ... (anything JSON-serialisable).

Every reader returns a :class:`Dataset4D`, which reads only the patterns asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import DataError

LABEL_KEYS = ("exx", "eyy", "exy", "theta")


class Dataset4D:
    """A lazily read 4D-STEM dataset: ``array`` is anything sliceable like a numpy array.

    Use as a context manager (or call :meth:`close`) to release the file.
    """

    def __init__(
        self,
        array: Any,
        path: Path,
        labels: dict[str, np.ndarray] | None = None,
        attrs: dict[str, Any] | None = None,
        closer: Any = None,
        source: str = "",
    ) -> None:
        shape = tuple(int(n) for n in array.shape)
        if len(shape) != 4:
            raise DataError(
                f"{path}: data {source or ''} has rank {len(shape)} (shape {shape}); "
                "expected 4D (Rx, Ry, Qx, Qy), reshape the scan to two scan axes"
            )
        if min(shape) < 1:
            raise DataError(f"{path}: data has an empty axis (shape {shape})")
        self._array = array
        self.path = path
        self.shape: tuple[int, int, int, int] = shape  # type: ignore[assignment]
        self.dtype = np.dtype(array.dtype)
        if not (np.issubdtype(self.dtype, np.number) and not np.issubdtype(self.dtype, np.complexfloating)):
            raise DataError(f"{path}: data dtype {self.dtype} is not a real number type")
        self.labels = labels or {}
        for k, v in self.labels.items():
            if v.shape != shape[:2]:
                raise DataError(f"{path}: label {k} has shape {v.shape}, expected the scan shape {shape[:2]}")
        self.attrs = attrs or {}
        self.source = source
        self._closer = closer

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[:2]

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return self.shape[2:]

    def __getitem__(self, idx: Any) -> np.ndarray:
        return np.asarray(self._array[idx])

    def pattern(self, rx: int, ry: int) -> np.ndarray:
        """One diffraction pattern ``(Qx, Qy)``."""
        return np.asarray(self._array[rx, ry])

    def iter_rows(self, rows_per_chunk: int | None = None, validate: bool = True) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(slice over Rx, block)`` with blocks of whole scan rows, about 64 MB each.

        ``validate`` raises :class:`DataError` on NaN/infinite or negative intensities, naming the
        first offending probe position.
        """
        rx, ry, qx, qy = self.shape
        if rows_per_chunk is None:
            rows_per_chunk = max(1, int(64e6 // (ry * qx * qy * max(self.dtype.itemsize, 4))))
        for r0 in range(0, rx, rows_per_chunk):
            sl = slice(r0, min(rx, r0 + rows_per_chunk))
            block = np.asarray(self._array[sl])
            if validate:
                check_intensities(block, self.path, offset=r0)
            yield sl, block

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> Dataset4D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Dataset4D({self.path}, shape={self.shape}, dtype={self.dtype}, labels={sorted(self.labels)})"


def check_intensities(block: np.ndarray, path: Path | str = "data", offset: int = 0) -> None:
    """Raise :class:`DataError` if a block of patterns ``(n, Ry, Qx, Qy)`` has NaN/inf or negatives."""
    if block.dtype.kind == "f":
        bad = ~np.isfinite(block)
        if bad.any():
            i, j = np.argwhere(bad.any(axis=(-2, -1)))[0][:2]
            raise DataError(
                f"{path}: NaN or infinite intensities at probe position ({i + offset}, {j}); "
                "remove or interpolate the bad frames first"
            )
    if block.dtype.kind in "fi" and block.size and block.min() < 0:
        idx = np.unravel_index(np.argmin(block), block.shape)
        raise DataError(
            f"{path}: negative intensity {block[idx]:.4g} at probe position ({idx[0] + offset}, {idx[1]}); "
            "intensities must be >= 0 (subtract the dark reference and clip at zero)"
        )


def _decode_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return v


def _open_hdf5(path: Path, dataset: str | None) -> Dataset4D:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({_short(exc)}); the file may be truncated or corrupt") from None
    try:
        name = dataset or _find_4d_dataset(f, path)
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise DataError(f"{path}: no dataset {name!r} in the file; use --dataset with one of {_list_datasets(f)}")
        arr = f[name]
        labels = {}
        if "labels" in f and isinstance(f["labels"], h5py.Group):
            labels = {k: np.asarray(f["labels"][k][()]) for k in LABEL_KEYS if k in f["labels"]}
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        return Dataset4D(arr, path, labels=labels, attrs=attrs, closer=f.close, source=name)
    except BaseException:
        f.close()
        raise


def _list_datasets(f: Any) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) else None)
    return names


def _find_4d_dataset(f: Any, path: Path) -> str:
    """The dataset to read when none is named: ``/data`` if present, else the only 4D dataset."""
    import h5py

    if "data" in f and isinstance(f["data"], h5py.Dataset):
        return "data"
    found: list[str] = []
    f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 4 else None)
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{path}: no 4D dataset in the file (datasets: {_list_datasets(f)}); use --dataset to name one")
    raise DataError(f"{path}: several 4D datasets {['/' + n for n in found]}; choose one with --dataset")


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


# Extension -> opener. Formats register here (one line each); see open_4dstem.
_OPENERS: dict[str, Any] = {".h5": _open_hdf5, ".hdf5": _open_hdf5, ".hdf": _open_hdf5}


def open_4dstem(path: str | os.PathLike[str], dataset: str | None = None) -> Dataset4D:
    """Open a 4D-STEM file lazily, dispatching on its extension.

    ``dataset`` names the array inside container formats (HDF5 path, .npz key, .mat variable).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a data file")
    opener = _OPENERS.get(p.suffix.lower())
    if opener is None:
        known = ", ".join(sorted(_OPENERS))
        raise DataError(f"{p}: unknown file type {p.suffix or '(no extension)'!r}; supported: {known}")
    return opener(p, dataset)


class HDF5Writer:
    """Writes edgestem's HDF5 layout block by block (see :func:`hdf5_writer`)."""

    def __init__(self, f: Any, shape: tuple[int, int, int, int], dtype: Any) -> None:
        self._f = f
        self.shape = shape
        self.data = f.create_dataset(
            "data", shape=shape, dtype=dtype, chunks=(1, 1, shape[2], shape[3])
        )

    def write(self, rows: slice, block: np.ndarray) -> None:
        """Write whole scan rows ``block`` of shape ``(n, Ry, Qx, Qy)`` at ``rows``."""
        self.data[rows] = block

    def set_labels(self, labels: dict[str, np.ndarray]) -> None:
        g = self._f.require_group("labels")
        for k, v in labels.items():
            v = np.asarray(v, dtype=np.float64)
            if v.shape != self.shape[:2]:
                raise ValueError(f"label {k} has shape {v.shape}, expected {self.shape[:2]}")
            g.create_dataset(k, data=v)
        g.attrs["units"] = json.dumps({"exx": "fraction", "eyy": "fraction", "exy": "fraction", "theta": "degree"})


@contextlib.contextmanager
def hdf5_writer(
    path: str | os.PathLike[str],
    shape: tuple[int, int, int, int],
    *,
    attrs: dict[str, Any] | None = None,
    dtype: Any = np.float32,
) -> Iterator[HDF5Writer]:
    """Create an edgestem HDF5 file atomically: it appears at ``path`` only if the block succeeds."""
    import h5py

    from edgestem import __version__
    from edgestem.atomic import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["edgestem_version"] = __version__
            for k, v in (attrs or {}).items():
                f.attrs[k] = v if isinstance(v, str | int | float | np.number) else json.dumps(v)
            yield HDF5Writer(f, shape, dtype)


def write_4dstem(
    path: str | os.PathLike[str],
    data: np.ndarray,
    labels: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write an in-memory array (and labels) atomically; the format follows the extension."""
    p = Path(path)
    writer = _WRITERS.get(p.suffix.lower())
    if writer is None:
        raise DataError(f"{p}: cannot write {p.suffix!r} files; supported: {', '.join(sorted(_WRITERS))}")
    data = np.asarray(data)
    if data.ndim != 4:
        raise DataError(f"data to write must be 4D (Rx, Ry, Qx, Qy), got shape {data.shape}")
    writer(p, data, labels or {}, attrs or {})
    return p


def _write_hdf5(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    with hdf5_writer(p, data.shape, attrs=attrs, dtype=data.dtype) as w:
        w.write(slice(None), data)
        if labels:
            w.set_labels(labels)


_WRITERS: dict[str, Any] = {".h5": _write_hdf5, ".hdf5": _write_hdf5}
