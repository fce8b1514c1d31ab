"""Readers and writers of 4D-STEM data, ``(Rx, Ry, Qx, Qy)``, read lazily where the format allows.

edgestem's own layout is HDF5:

* ``/data``: float32 ``(Rx, Ry, Qx, Qy)``, chunked one pattern per chunk;
* ``/labels/exx``, ``/labels/eyy``, ``/labels/exy`` (fractions) and ``/labels/theta`` (degrees),
  each ``(Rx, Ry)``, when the data are simulated;
* root attributes: ``edgestem_version``, ``config`` (YAML), ``seed``, ``noise`` (JSON), lattice
  constants, ... (anything JSON-serialisable).

Other formats (:func:`open_4dstem` dispatches on the extension):

============================  =============================================  ====================
extension                     reader                                         lazy?
============================  =============================================  ====================
``.h5 .hdf5 .hdf``            h5py; ``/data``, an EMD/py4DSTEM datacube, or  yes
                              the only 4D dataset
``.emd``                      the same (EMD 1.0 / py4DSTEM >= 0.13, and the  yes
                              older EMD groups with ``emd_group_type = 1``)
``.npy``                      ``np.load(mmap_mode="r")``                     yes (memory map)
``.npz``                      key ``data`` or the only 4D array; labels      uncompressed: yes
                              from keys ``exx, eyy, exy, theta``             (memory map);
                                                                             compressed: no
``.mat`` v7.3                 h5py, MATLAB's column-major axes undone        yes
``.mat`` v5                   ``scipy.io.loadmat``                           no
``.mib .dm3 .dm4 .xml .blo``  rosettasciio (optional extra ``io``): Merlin,  yes (dask)
``.hspy``                     Gatan, EMPAD, blockfile, HyperSpy
============================  =============================================  ====================

Every reader returns a :class:`Dataset4D`, which reads only the patterns asked for, and raises
:class:`~edgestem.errors.DataError` (one line) for missing, corrupt or unsuitable files.
:func:`write_4dstem` writes each of these formats except Gatan's (no writer exists), atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import DataError, EdgestemError, ToolMissingError

LABEL_KEYS = ("exx", "eyy", "exy", "theta")

# Name of the variable/key holding the attributes (JSON) in formats without native attributes.
_ATTRS_KEY = "edgestem_attrs"


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
                f"{path}: {f'array {source!r}' if source else 'the data'} has rank {len(shape)} (shape {shape}); "
                "expected 4D (Rx, Ry, Qx, Qy), reshape the scan to two scan axes"
            )
        if min(shape) < 1:
            raise DataError(f"{path}: data has an empty axis (shape {shape})")
        self._array = array
        self.path = path
        self.shape: tuple[int, int, int, int] = shape  # type: ignore[assignment]
        try:
            self.dtype = np.dtype(array.dtype)
        except TypeError:
            raise DataError(f"{path}: data dtype {array.dtype!r} is not a number type") from None
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

    def _read(self, idx: Any) -> np.ndarray:
        try:
            return np.asarray(self._array[idx])
        except OSError as exc:  # h5py/memmap read failures: a damaged file, not a bug
            raise DataError(
                f"{self.path}: reading the data failed ({_short(exc)}); the file may be truncated or corrupt"
            ) from None

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self._read(idx)

    def pattern(self, rx: int, ry: int) -> np.ndarray:
        """One diffraction pattern ``(Qx, Qy)``."""
        return self._read((rx, ry))

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
            block = self._read(sl)
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


# ----------------------------------------------------------------------------------------------
# small helpers


def json_attr(value: Any) -> Any:
    """An attribute that may hold JSON text (edgestem stores dicts so): the parsed value, else None."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def _decode_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return v


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split())[:120] if text else type(exc).__name__


def _to_json(obj: Any) -> str:
    """JSON text of ``obj``, converting numpy scalars/arrays and paths to plain types."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic | np.ndarray):
            return o.tolist()
        return str(o)

    return json.dumps(obj, default=default)


def _attrs_from_json(text: Any, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(str(text))
    except ValueError:
        raise DataError(f"{path}: the {_ATTRS_KEY} entry is not valid JSON; remove or fix it") from None
    return value if isinstance(value, dict) else {}


def _names(items: Any) -> str:
    shown = list(items)
    return ", ".join(shown[:20]) + (f", ... ({len(shown)} in all)" if len(shown) > 20 else "") if shown else "none"


class _ReversedAxes:
    """A read-only view of an array-like with its axes reversed (MATLAB v7.3 as seen by h5py).

    Supports integer, slice and Ellipsis indexing; the underlying reads stay lazy.
    """

    def __init__(self, array: Any) -> None:
        self._array = array
        self.shape = tuple(int(n) for n in array.shape)[::-1]
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = _expand_index(idx, self.shape)
        select: list[Any] = []
        flip: list[bool] = []  # per kept axis, in this view's order
        for i, (k, n) in enumerate(zip(idx, self.shape, strict=True)):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step > 0:
                    select.append(slice(start, max(start, stop), step))
                    flip.append(False)
                else:  # h5py reads increasing selections only: read forwards, flip afterwards
                    count = len(range(start, stop, step))
                    first = start + step * (count - 1)  # the smallest index read
                    select.append(slice(first, start + 1, -step) if count else slice(0, 0))
                    flip.append(True)
            else:
                j = int(k)
                if not -n <= j < n:
                    raise IndexError(f"index {j} is out of bounds for axis {i} with size {n}")
                select.append(j % n)
        out = np.asarray(self._array[tuple(select[::-1])]).transpose()
        if any(flip):
            out = out[tuple(slice(None, None, -1) if f else slice(None) for f in flip)]
        return out


def _expand_index(idx: Any, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """Normalise ``idx`` to one int or slice per axis (Ellipsis expanded, missing axes filled)."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    if sum(1 for k in idx if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    for k in idx:
        if k is not Ellipsis and not isinstance(k, slice | int | np.integer):
            raise TypeError(f"only integers, slices and '...' can index this dataset, not {type(k).__name__}")
    if Ellipsis in idx:
        i = idx.index(Ellipsis)
        fill = len(shape) - (len(idx) - 1)
        idx = idx[:i] + (slice(None),) * fill + idx[i + 1 :]
    if len(idx) > len(shape):
        raise IndexError(f"too many indices: {len(idx)} for {len(shape)} axes")
    return idx + (slice(None),) * (len(shape) - len(idx))


class _Computed:
    """Adapts a dask (or any lazy) array so that slicing returns numpy arrays."""

    def __init__(self, array: Any) -> None:
        self._array = array
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        out = self._array[idx]
        if hasattr(out, "compute"):
            out = out.compute()
        return np.asarray(out)


# ----------------------------------------------------------------------------------------------
# HDF5 (edgestem, EMD / py4DSTEM)


def _h5_open(path: Path, what: str) -> Any:
    """Open an HDF5-based file for reading; unreadable files become a one-line DataError."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable {what} file ({_short(exc)}); it may be truncated or corrupt") from None


def _open_hdf5(path: Path, dataset: str | None) -> Dataset4D:
    import h5py

    f = _h5_open(path, "HDF5")
    try:
        name = dataset or _find_4d_dataset(f, path)
        if name not in f or not isinstance(f[name], h5py.Dataset):
            cands = _list_datasets(f, ndim=4) or _list_datasets(f)
            raise DataError(f"{path}: no dataset {name!r} in the file; choose one of {_names(cands)} (--dataset)")
        arr = f[name]
        labels = _hdf5_labels(f, arr)
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
        if "calibration" not in attrs and _is_emd_array(arr.parent) and arr.ndim == 4:
            cal = _emd_calibration(arr.parent)
            if cal is not None:
                attrs["calibration"] = cal
        return Dataset4D(arr, path, labels=labels, attrs=attrs, closer=f.close, source=name)
    except EdgestemError:
        f.close()
        raise
    except Exception as exc:
        f.close()
        raise DataError(f"{path}: cannot read the HDF5 file ({_short(exc)}); it may be truncated or corrupt") from None


def _hdf5_labels(f: Any, arr: Any) -> dict[str, np.ndarray]:
    """Labels of the edgestem layout (``/labels/*``), or EMD label arrays beside the datacube."""
    import h5py

    if "labels" in f and isinstance(f["labels"], h5py.Group):
        g = f["labels"]
        return {k: np.asarray(g[k][()]) for k in LABEL_KEYS if k in g and isinstance(g[k], h5py.Dataset)}
    parent = arr.parent
    if not _is_emd_array(parent) or parent.name == "/":
        return {}
    labels = {}
    for k in LABEL_KEYS:
        g = parent.parent.get(k)
        if _is_emd_array(g) and g["data"].shape == tuple(arr.shape[:2]):
            labels[k] = np.asarray(g["data"][()])
    return labels


def _emd_calibration(g: Any) -> list[dict[str, Any]] | None:
    """Calibration of an EMD array from its dim vectors (step and units), None when all are pixels."""
    axes = []
    for n, default in enumerate(("Rx", "Ry", "Qx", "Qy")):
        dim = g.get(f"dim{n}")
        if dim is None or dim.ndim != 1 or dim.shape[0] < 2:
            return None
        v = np.asarray(dim[:2], dtype=float)
        units = str(_decode_attr(dim.attrs.get("units", "pixels")) or "pixels")
        axes.append(
            {"name": str(_decode_attr(dim.attrs.get("name", default))), "scale": float(v[1] - v[0]), "units": units}
        )
    return axes if any(a["units"] != "pixels" or a["scale"] != 1.0 for a in axes) else None


def calibration_of(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The (Rx, Ry, Qx, Qy) calibration a file carries: a list of four ``{name, scale, units}``, or None.

    From edgestem's own ``calibration`` attribute (EMD dim vectors are read into it), or the axes
    rosettasciio reports for detector formats. None when every axis is in pixels.
    """
    for key in ("calibration", "axes"):
        axes = json_attr(attrs.get(key))
        if isinstance(axes, list) and len(axes) == 4 and all(isinstance(a, dict) for a in axes):
            out = []
            for a, default in zip(axes, ("Rx", "Ry", "Qx", "Qy"), strict=True):
                scale = a.get("scale")
                units = a.get("units")
                units = "pixels" if units in (None, "", "<undefined>", "Undefined") else str(units)
                out.append({"name": str(a.get("name") or default), "scale": float(scale or 1.0), "units": units})
            if any(a["units"] != "pixels" or a["scale"] != 1.0 for a in out):
                return out
    return None


def _is_emd_array(g: Any) -> bool:
    """True for an EMD array group: ``emd_group_type`` 'array' (EMD 1.0) or 1 (older EMD), with ``data``."""
    import h5py

    if not isinstance(g, h5py.Group) or "emd_group_type" not in g.attrs:
        return False
    kind = _decode_attr(g.attrs["emd_group_type"])
    return kind in ("array", 1) and isinstance(g.get("data"), h5py.Dataset)


def _list_datasets(f: Any, ndim: int | None = None) -> list[str]:
    import h5py

    names: list[str] = []

    def visit(n: str, o: Any) -> None:
        if isinstance(o, h5py.Dataset) and (ndim is None or o.ndim == ndim):
            names.append("/" + n)

    f.visititems(visit)
    return names


def _find_4d_dataset(f: Any, path: Path) -> str:
    """The dataset to read when none is named.

    ``/data`` if present, else the ``data`` of the only 4D EMD array (a py4DSTEM datacube), else the
    only 4D dataset.
    """
    import h5py

    if "data" in f and isinstance(f["data"], h5py.Dataset):
        return "data"
    emd: list[str] = []
    f.visititems(lambda n, o: emd.append(n + "/data") if _is_emd_array(o) and o["data"].ndim == 4 else None)
    if len(emd) == 1:
        return emd[0]
    if len(emd) > 1:
        raise DataError(f"{path}: several 4D EMD datacubes {_names('/' + n for n in emd)}; choose one with --dataset")
    found = _list_datasets(f, ndim=4)
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{path}: no 4D dataset in the file (datasets: {_names(_list_datasets(f))}); use --dataset to name one"
        )
    raise DataError(f"{path}: several 4D datasets {_names(found)}; choose one with --dataset")


# ----------------------------------------------------------------------------------------------
# numpy


def _open_npy(path: Path, dataset: str | None) -> Dataset4D:
    """A memory-mapped ``.npy`` (``dataset`` does not apply: the file holds one array)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npy file ({_short(exc)}); it may be truncated or corrupt") from None
    return Dataset4D(arr, path, source="array")


def _open_npz(path: Path, dataset: str | None) -> Dataset4D:
    """An ``.npz``: uncompressed members are memory-mapped, compressed ones load whole on access."""
    import zipfile

    with open(path, "rb") as fp:
        magic = fp.read(6)
    if magic == b"\x93NUMPY":
        raise DataError(f"{path}: holds a single .npy array, not an .npz archive; rename it to .npy")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a zip archive (an .npz is a zip of .npy files); it may be truncated or corrupt")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"{path}: not a readable .npz archive ({_short(exc)}); it may be truncated or corrupt"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single .npy array, not an .npz archive; rename it to .npy")
    with npz:
        try:
            with zipfile.ZipFile(path) as zf:
                headers = {k: _npz_member_header(zf, k) for k in npz.files}
            key = _choose_key(path, dataset, headers, "key", "archive")
            arr = _npz_member(path, npz, key)
            labels = {k: np.asarray(npz[k]) for k in LABEL_KEYS if k in headers and k != key}
            attrs = _attrs_from_json(npz[_ATTRS_KEY], path) if _ATTRS_KEY in headers else {}
        except EdgestemError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read the .npz archive ({_short(exc)}); it may be corrupt") from None
    return Dataset4D(arr, path, labels=labels, attrs=attrs, source=key)


def _npz_member_header(zf: Any, key: str) -> tuple[tuple[int, ...], Any] | None:
    """``(shape, dtype)`` of an npz member from its .npy header, without reading the array."""
    name = key + ".npy" if key + ".npy" in zf.namelist() else key
    with zf.open(name) as fp:
        try:
            version = np.lib.format.read_magic(fp)
        except ValueError:
            return None
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            return None
    return tuple(shape), dtype


def _npz_member(path: Path, npz: Any, key: str) -> Any:
    """Memory-map an uncompressed npz member in place; fall back to loading it."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        name = key + ".npy" if key + ".npy" in zf.namelist() else key
        info = zf.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return npz[key]
        with open(path, "rb") as fp:
            fp.seek(info.header_offset)
            local = fp.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise DataError(f"{path}: damaged zip entry {name!r}; the archive may be truncated")
            start = (
                info.header_offset
                + 30
                + int.from_bytes(local[26:28], "little")
                + int.from_bytes(local[28:30], "little")
            )
            fp.seek(start)
            version = np.lib.format.read_magic(fp)
            if version not in ((1, 0), (2, 0)):
                return npz[key]
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fp)
            offset = fp.tell()
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if dtype.hasobject or nbytes == 0:
        return npz[key]
    if offset + nbytes > start + info.compress_size:
        raise DataError(f"{path}: member {key!r} is shorter than its header says; the archive is corrupt")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")


def _choose_key(path: Path, dataset: str | None, shapes: dict[str, Any], what: str, where: str) -> str:
    """The array to read: ``dataset`` if given, else ``data``, else the only 4D entry."""

    def shape_of(k: str) -> tuple[int, ...] | None:
        h = shapes[k]
        return None if h is None else tuple(h[0])

    def listing(keys: Any) -> str:
        return _names(f"{k} {shape_of(k)}" if shapes[k] is not None else f"{k} (not an array)" for k in keys)

    if dataset is not None:
        if dataset not in shapes:
            raise DataError(
                f"{path}: no {what} {dataset!r} in the {where}; choose one of {listing(shapes)} (--dataset)"
            )
        return dataset
    if "data" in shapes:
        return "data"
    four = [k for k in shapes if shape_of(k) is not None and len(shape_of(k) or ()) == 4]
    if len(four) == 1:
        return four[0]
    if not four:
        raise DataError(f"{path}: no 4D array in the {where} (found {listing(shapes)}); name one with --dataset")
    raise DataError(f"{path}: several 4D arrays {listing(four)}; choose one with --dataset")


# ----------------------------------------------------------------------------------------------
# MATLAB


def _is_mat73(path: Path) -> bool:
    """MAT v7.3 files are HDF5 with a 512-byte MATLAB header (version 0x0200 at byte 124)."""
    import h5py

    with open(path, "rb") as fp:
        head = fp.read(128)
    if len(head) == 128 and head[124:128] in (b"\x00\x02IM", b"\x02\x00MI"):
        return True
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _open_mat(path: Path, dataset: str | None) -> Dataset4D:
    """A MATLAB file: v7.3 lazily through h5py, older versions eagerly through scipy."""
    if _is_mat73(path):
        return _open_mat73(path, dataset)
    return _open_mat5(path, dataset)


def _open_mat73(path: Path, dataset: str | None) -> Dataset4D:
    import h5py

    f = _h5_open(path, "MAT v7.3")
    try:
        variables = {
            k: (tuple(v.shape[::-1]), v.dtype)
            for k, v in f.items()
            if isinstance(v, h5py.Dataset) and not k.startswith("#")
        }
        key = _choose_key(path, dataset, variables, "variable", "MAT-file")
        arr = _ReversedAxes(f[key])
        labels = {k: np.asarray(f[k][()]).T for k in LABEL_KEYS if k in variables and k != key}
        attrs = _attrs_from_json(_mat73_char(f[_ATTRS_KEY]), path) if _ATTRS_KEY in variables else {}
        return Dataset4D(arr, path, labels=labels, attrs=attrs, closer=f.close, source=key)
    except EdgestemError:
        f.close()
        raise
    except Exception as exc:
        f.close()
        raise DataError(f"{path}: cannot read the MAT v7.3 file ({_short(exc)}); it may be corrupt") from None


def _mat73_char(ds: Any) -> str:
    """A MATLAB char array as stored in v7.3 (uint16 code units, axes reversed)."""
    return np.asarray(ds[()]).T.astype("<u2").tobytes().decode("utf-16-le", "replace")


def _open_mat5(path: Path, dataset: str | None) -> Dataset4D:
    import scipy.io

    try:
        variables = {name: (tuple(shape), cls) for name, shape, cls in scipy.io.whosmat(path)}
    except Exception as exc:
        raise DataError(f"{path}: not a readable MAT-file ({_short(exc)}); it may be truncated or corrupt") from None
    key = _choose_key(path, dataset, variables, "variable", "MAT-file")
    wanted = [key] + [k for k in (*LABEL_KEYS, _ATTRS_KEY) if k in variables and k != key]
    try:
        m = scipy.io.loadmat(path, variable_names=wanted)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the MAT-file ({_short(exc)}); it may be truncated or corrupt") from None
    arr = m[key]
    if not isinstance(arr, np.ndarray) or arr.dtype.names:
        raise DataError(f"{path}: variable {key!r} is a MATLAB {variables[key][1]}, not a numeric array")
    labels = {k: np.asarray(m[k]) for k in LABEL_KEYS if k in m and k != key}
    attrs: dict[str, Any] = {}
    if _ATTRS_KEY in m:
        text = m[_ATTRS_KEY]
        attrs = _attrs_from_json(text.item() if np.size(text) == 1 else "".join(np.ravel(text)), path)
    return Dataset4D(arr, path, labels=labels, attrs=attrs, source=key)


# ----------------------------------------------------------------------------------------------
# detector formats through rosettasciio (optional extra "io")

# extension -> (rsciio plugin, name of the format for messages)
_RSCIIO_FORMATS: dict[str, tuple[str, str]] = {
    ".mib": ("quantumdetector", "Quantum Detectors Merlin .mib"),
    ".dm3": ("digitalmicrograph", "Gatan DigitalMicrograph .dm3"),
    ".dm4": ("digitalmicrograph", "Gatan DigitalMicrograph .dm4"),
    ".xml": ("empad", "EMPAD .xml/.raw"),
    ".blo": ("blockfile", "blockfile .blo"),
    ".hspy": ("hspy", "HyperSpy .hspy"),
}

# Python module -> pip package, for the message when an optional rsciio dependency is missing.
_PIP_NAMES = {"skimage": "scikit-image", "dateutil": "python-dateutil", "yaml": "pyyaml"}


def _import_rsciio(ext: str) -> Any:
    """The rsciio plugin module for ``ext``; :class:`ToolMissingError` if rosettasciio is absent."""
    import importlib

    plugin = _RSCIIO_FORMATS[ext][0]
    try:
        importlib.import_module("rsciio")
    except ImportError:
        raise ToolMissingError(
            f"reading {ext} files needs the optional 'io' extra: pip install 'edgestem[io]'"
        ) from None
    try:
        return importlib.import_module(f"rsciio.{plugin}")
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        pkg = _PIP_NAMES.get(missing, missing or "rosettasciio")
        raise ToolMissingError(
            f"reading {ext} files needs {pkg!r}, an optional dependency of rosettasciio: pip install {pkg}"
        ) from None


def _open_rsciio(path: Path, dataset: str | None) -> Dataset4D:
    """A detector file read lazily by rosettasciio, navigation axes mapped to (Rx, Ry)."""
    ext = path.suffix.lower()
    module = _import_rsciio(ext)
    fmt = _RSCIIO_FORMATS[ext][1]
    try:
        signals = module.file_reader(str(path), lazy=True)
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read as {fmt} ({_short(exc)}); the file may be incomplete or corrupt"
        ) from None
    if isinstance(signals, dict):
        signals = [signals]
    if not signals:
        raise DataError(f"{path}: the {fmt} file holds no data")
    titles = [str(_nested(s.get("metadata", {}), "General", "title") or "") for s in signals]
    listing = _names(
        f"{i}: {t or 'untitled'} {tuple(np.shape(s['data']))}"
        for i, (s, t) in enumerate(zip(signals, titles, strict=True))
    )
    if dataset is not None:
        chosen = [i for i, t in enumerate(titles) if dataset in (t, str(i))]
        if not chosen:
            raise DataError(f"{path}: no signal {dataset!r} in the file; choose one of {listing} (--dataset)")
        sig = signals[chosen[0]]
    else:
        four = [s for s in signals if len(np.shape(s["data"])) == 4]
        if len(four) > 1:
            raise DataError(f"{path}: several 4D signals ({listing}); choose one by index or title with --dataset")
        sig = four[0] if four else max(signals, key=lambda s: len(np.shape(s["data"])))
    data, axes = _navigation_first(sig, path)
    attrs: dict[str, Any] = {
        "format": fmt,
        "axes": [{key: _plain(ax.get(key)) for key in ("name", "scale", "offset", "units")} for ax in axes],
    }
    title = _nested(sig.get("metadata", {}), "General", "title")
    if title:
        attrs["title"] = str(title)
    extra = (sig.get("original_metadata") or {}).get(_ATTRS_KEY)
    if isinstance(extra, str | bytes):
        attrs.update(_attrs_from_json(_decode_attr(extra), path))
    return Dataset4D(_Computed(data), path, attrs=attrs, source=fmt)


def _navigation_first(sig: dict[str, Any], path: Path) -> tuple[Any, list[dict[str, Any]]]:
    """Transpose rsciio's array so the navigation axes come first: ``(Rx, Ry, Qx, Qy)``.

    rsciio gives arrays in numpy order with one axis dict per array axis (``index_in_array``,
    ``navigate``); the first navigation axis in array order (the slow scan axis) becomes Rx.
    """
    data = sig["data"]
    ndim = len(np.shape(data))
    axes = sorted(sig.get("axes") or [], key=lambda a: a.get("index_in_array", 0))
    if len(axes) != ndim:
        axes = [{"navigate": i < ndim - 2} for i in range(ndim)]
    nav = [i for i, a in enumerate(axes) if a.get("navigate")]
    sig_axes = [i for i, a in enumerate(axes) if not a.get("navigate")]
    if ndim == 4 and len(nav) == 2 and len(sig_axes) == 2:
        order = nav + sig_axes
        if order != [0, 1, 2, 3]:
            data = data.transpose(order)
        return data, [axes[i] for i in order]
    shape = tuple(int(n) for n in np.shape(data))
    hint = (
        "the file holds no 2D scan shape (for .mib, keep the Merlin .hdr file beside it)"
        if len(nav) <= 1
        else "expected two scan and two detector axes"
    )
    raise DataError(f"{path}: data has shape {shape} ({len(nav)} scan, {len(sig_axes)} detector axes); {hint}")


def _nested(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _plain(v: Any) -> Any:
    v = _decode_attr(v)
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


# ----------------------------------------------------------------------------------------------
# dispatch

# Extension -> opener. Formats register here (one line each); see open_4dstem.
_OPENERS: dict[str, Any] = {
    ".h5": _open_hdf5,
    ".hdf5": _open_hdf5,
    ".hdf": _open_hdf5,
    ".emd": _open_hdf5,
    ".npy": _open_npy,
    ".npz": _open_npz,
    ".mat": _open_mat,
    **{ext: _open_rsciio for ext in _RSCIIO_FORMATS},
}


def open_4dstem(path: str | os.PathLike[str], dataset: str | None = None) -> Dataset4D:
    """Open a 4D-STEM file lazily, dispatching on its extension.

    ``dataset`` names the array inside container formats (HDF5 path, .npz key, .mat variable,
    index or title of a signal in a detector file). Any failure is a one-line :class:`DataError`
    (or :class:`ToolMissingError` when an optional reader is not installed).
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
    try:
        return opener(p, dataset)
    except EdgestemError:
        raise
    except Exception as exc:  # a library error no opener anticipated: still one line for the user
        raise DataError(f"{p}: cannot read the file ({type(exc).__name__}: {_short(exc)})") from exc


# ----------------------------------------------------------------------------------------------
# writers


class HDF5Writer:
    """Writes edgestem's HDF5 layout block by block (see :func:`hdf5_writer`)."""

    def __init__(self, f: Any, shape: tuple[int, int, int, int], dtype: Any, gzip: int | None = None) -> None:
        self._f = f
        self.shape = shape
        packing = {} if gzip is None else {"compression": "gzip", "compression_opts": int(gzip), "shuffle": True}
        self.data = f.create_dataset("data", shape=shape, dtype=dtype, chunks=(1, 1, shape[2], shape[3]), **packing)

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

    def set_array(self, name: str, values: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """An extra array (e.g. ``specimen/thickness_nm``) next to ``/data``, with optional attributes."""
        ds = self._f.create_dataset(name, data=np.asarray(values))
        _set_h5_attrs(ds, attrs or {})


def _set_h5_attrs(obj: Any, attrs: dict[str, Any]) -> None:
    for k, v in attrs.items():
        obj.attrs[k] = v if isinstance(v, str | int | float | np.number) else _to_json(v)


@contextlib.contextmanager
def hdf5_writer(
    path: str | os.PathLike[str],
    shape: tuple[int, int, int, int],
    *,
    attrs: dict[str, Any] | None = None,
    dtype: Any = np.float32,
    gzip: int | None = None,
) -> Iterator[HDF5Writer]:
    """Create an edgestem HDF5 file atomically: it appears at ``path`` only if the block succeeds.

    ``gzip``: compression level of ``/data`` (with the shuffle filter); None writes it uncompressed.
    """
    import h5py

    from edgestem import __version__
    from edgestem.atomic import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["edgestem_version"] = __version__
            cal = calibration_of(attrs or {})
            _set_h5_attrs(f, {**(attrs or {}), **({"calibration": cal} if cal else {})})
            yield HDF5Writer(f, shape, dtype, gzip)
            arrays = {"datacube": (f["data"], ("Rx", "Ry", "Qx", "Qy"))}
            if "labels" in f:
                arrays.update({k: (f["labels"][k], ("Rx", "Ry")) for k in f["labels"]})
            add_emd_tree(f, arrays, cal)


def add_emd_tree(
    f: Any, arrays: dict[str, tuple[Any, tuple[str, ...]]], calibration: list[dict[str, Any]] | None = None
) -> None:
    """Make an open HDF5 file also an EMD 1.0 file (what emdfile and py4DSTEM read), at no cost in space.

    Each of ``arrays`` (name -> (dataset, dimension names)) appears as an emdfile ``Array`` group
    ``/edgestem/<name>`` whose ``data`` is a hard link to the dataset (the bytes are stored once);
    edgestem's own layout (``/data``, ``/labels``, ``/maps``) is unchanged. ``calibration``
    (:func:`calibration_of`) gives the dimension vectors their step and units (Rx, Ry, Qx, Qy in
    order; scan-shaped arrays take the first two); without it every axis is in pixels.
    """
    import uuid

    f.attrs["emd_group_type"] = "file"
    f.attrs["version_major"] = 1
    f.attrs["version_minor"] = 0
    f.attrs["UUID"] = str(uuid.uuid4())
    f.attrs["authoring_program"] = "edgestem"
    f.attrs["authoring_user"] = ""
    root = f.require_group("edgestem")
    root.attrs["emd_group_type"] = "root"
    root.attrs["python_class"] = "Root"
    for name, (dset, dims) in arrays.items():
        g = root.create_group(name)
        g.attrs["emd_group_type"] = "array"
        g.attrs["python_class"] = "Array"
        g["data"] = dset  # a hard link: the same dataset under a second name
        if "units" not in dset.attrs:
            dset.attrs["units"] = ""
        for n, dim_name in enumerate(dims):
            cal = calibration[n] if calibration is not None and n < len(calibration) and n < 4 else None
            if dims[:2] != ("Rx", "Ry") or n >= 2 and dims[2:] != ("Qx", "Qy"):
                cal = None  # not a scan or pattern axis (the affine's 2 x 2)
            step, units = (cal["scale"], cal["units"]) if cal else (1.0, "pixels")
            dim = g.create_dataset(f"dim{n}", data=np.array([0.0, step]))  # linear dims: 2 samples
            dim.attrs["name"] = dim_name
            dim.attrs["units"] = units


HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_NO_LABEL_SUFFIXES = (".npy", ".mib", ".xml", ".blo", ".hspy")


def writable_formats() -> str:
    """The extensions :func:`write_4dstem` writes, for messages."""
    return ", ".join(sorted(_WRITERS))


def check_writable_format(path: str | os.PathLike[str], *, labels: bool = False, option: str = "--out") -> None:
    """Refuse, before any work, an output whose extension no writer handles or that cannot hold labels."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _WRITERS:
        what = f"{p.suffix!r} files" if p.suffix else "a file without an extension"
        raise DataError(f"{option} {p}: cannot write {what}; give one of {writable_formats()}")
    if labels and suffix in _NO_LABEL_SUFFIXES:
        raise DataError(
            f"{option} {p}: {suffix} files cannot hold the strain labels; write .h5, .npz, .mat or .emd to keep them"
        )


class _MemoryWriter:
    """Collects blocks in memory for formats written in one piece (see :func:`data_writer`)."""

    def __init__(self, shape: tuple[int, int, int, int], dtype: Any) -> None:
        self.shape = shape
        self.data = np.zeros(shape, dtype=dtype)
        self.labels: dict[str, np.ndarray] = {}

    def write(self, rows: slice, block: np.ndarray) -> None:
        self.data[rows] = block

    def set_labels(self, labels: dict[str, np.ndarray]) -> None:
        self.labels = {k: np.asarray(v, dtype=np.float64) for k, v in labels.items()}


@contextlib.contextmanager
def data_writer(
    path: str | os.PathLike[str],
    shape: tuple[int, int, int, int],
    *,
    attrs: dict[str, Any] | None = None,
    dtype: Any = np.float32,
) -> Iterator[Any]:
    """A block writer in the format the extension of ``path`` names (atomic, like :func:`hdf5_writer`).

    HDF5 streams block by block; the other formats of :func:`write_4dstem` collect the scan in
    memory (refused up front when it cannot fit) and write it at the end.
    """
    p = Path(path)
    if p.suffix.lower() in HDF5_SUFFIXES:
        with hdf5_writer(p, shape, attrs=attrs, dtype=dtype) as w:
            yield w
        return
    check_writable_format(p)
    from edgestem.paths import check_memory

    nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    check_memory(2 * nbytes, f"writing {p.suffix} (the whole scan in memory)", "write .h5 instead (it streams)")
    w = _MemoryWriter(shape, dtype)
    yield w
    write_4dstem(p, w.data, w.labels, attrs)


def write_4dstem(
    path: str | os.PathLike[str],
    data: np.ndarray,
    labels: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
    *,
    mat_version: str = "7.3",
) -> Path:
    """Write an in-memory array (and labels) atomically; the format follows the extension.

    ``mat_version`` picks the MAT-file flavour: ``"7.3"`` (HDF5, default) or ``"5"`` (scipy).
    Formats without room for labels (.npy, .mib, .xml, .blo, .hspy) refuse them rather than drop
    them; .npy, .mib and .blo also drop ``attrs``.
    """
    p = Path(path)
    writer = _WRITERS.get(p.suffix.lower())
    if writer is None:
        raise DataError(f"{p}: cannot write {p.suffix!r} files; supported: {', '.join(sorted(_WRITERS))}")
    data = np.asarray(data)
    if data.ndim != 4:
        raise DataError(f"data to write must be 4D (Rx, Ry, Qx, Qy), got shape {data.shape}")
    labels = {k: np.asarray(v) for k, v in (labels or {}).items()}
    for k, v in labels.items():
        if v.shape != data.shape[:2]:
            raise DataError(f"label {k} has shape {v.shape}, expected the scan shape {data.shape[:2]}")
    if str(mat_version) not in ("7.3", "5"):
        raise DataError(f"mat_version must be '7.3' or '5', got {mat_version!r}")
    options = {"mat_version": str(mat_version)} if p.suffix.lower() == ".mat" else {}
    writer(p, data, labels, attrs or {}, **options)
    return p


def _no_labels(p: Path, labels: dict[str, np.ndarray]) -> None:
    if labels:
        raise DataError(f"{p}: {p.suffix} files cannot hold strain labels; write .h5, .npz, .mat or .emd to keep them")


def _write_hdf5(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    with hdf5_writer(p, data.shape, attrs=attrs, dtype=data.dtype) as w:
        w.write(slice(None), data)
        if labels:
            w.set_labels(labels)


def _write_npy(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    from edgestem.atomic import atomic_path

    _no_labels(p, labels)
    with atomic_path(p) as tmp, open(tmp, "wb") as fp:
        np.save(fp, data, allow_pickle=False)


def _write_npz(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    """Uncompressed, so that :func:`open_4dstem` can memory-map ``data``."""
    from edgestem.atomic import atomic_path

    members: dict[str, np.ndarray] = {"data": data}
    members.update({k: np.asarray(v, dtype=np.float64) for k, v in labels.items()})
    if attrs:
        members[_ATTRS_KEY] = np.array(_to_json(attrs))
    with atomic_path(p) as tmp, open(tmp, "wb") as fp:
        np.savez(fp, **members)


_MAT_CLASSES = {
    "float64": "double", "float32": "single", "int8": "int8", "uint8": "uint8", "int16": "int16",
    "uint16": "uint16", "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
}  # fmt: skip


def _mat73_header() -> bytes:
    """MATLAB's 128-byte v7.3 header: text padded to 116 bytes, 8 zero bytes, version 0x0200, 'IM'."""
    text = f"MATLAB 7.3 MAT-file, Platform: edgestem, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} "
    text += "HDF5 schema 1.00 ."
    return text.encode("ascii")[:116].ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def _write_mat(
    p: Path,
    data: np.ndarray,
    labels: dict[str, np.ndarray],
    attrs: dict[str, Any],
    mat_version: str = "7.3",
    **_: Any,
) -> None:
    if data.dtype.name not in _MAT_CLASSES:
        raise DataError(f"{p}: MATLAB cannot store dtype {data.dtype}; convert to float32 or float64 first")
    if mat_version == "5":
        _write_mat5(p, data, labels, attrs)
    else:
        _write_mat73(p, data, labels, attrs)


def _write_mat73(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """MAT v7.3: HDF5 with a 512-byte user block holding MATLAB's header; arrays stored column-major."""
    import h5py

    from edgestem.atomic import atomic_path

    def variable(f: Any, name: str, arr: np.ndarray, chunks: Any = None) -> Any:
        ds = f.create_dataset(name, shape=arr.shape[::-1], dtype=arr.dtype.newbyteorder("="), chunks=chunks)
        ds.attrs.create("MATLAB_class", np.bytes_(_MAT_CLASSES[arr.dtype.name]))
        return ds

    rx, ry, qx, qy = data.shape
    with atomic_path(p) as tmp:
        with h5py.File(tmp, "w", userblock_size=512) as f:
            ds = variable(f, "data", data, chunks=(qy, qx, 1, 1))
            for i in range(rx):  # one scan row at a time: no transposed copy of the whole array
                ds[:, :, :, i] = data[i].transpose()
            for k, v in labels.items():
                lab = np.asarray(v, dtype=np.float64)
                variable(f, k, lab)[...] = lab.T
            if attrs:
                codes = np.frombuffer(_to_json(attrs).encode("utf-16-le"), dtype="<u2")
                ds = f.create_dataset(_ATTRS_KEY, data=codes.reshape(-1, 1))
                ds.attrs.create("MATLAB_class", np.bytes_("char"))
                ds.attrs.create("MATLAB_int_decode", np.int32(2))
        with open(tmp, "r+b") as fp:
            fp.write(_mat73_header())


def _write_mat5(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    import scipy.io

    from edgestem.atomic import atomic_path

    if data.nbytes >= 2**31:
        raise DataError(
            f"{p}: MAT v5 variables are limited to 2 GB ({data.nbytes / 1e9:.1f} GB); use mat_version='7.3'"
        )
    variables: dict[str, Any] = {"data": data}
    variables.update({k: np.asarray(v, dtype=np.float64) for k, v in labels.items()})
    if attrs:
        variables[_ATTRS_KEY] = _to_json(attrs)
    with atomic_path(p) as tmp, open(tmp, "wb") as fp:
        scipy.io.savemat(fp, variables, format="5", do_compression=False)


def _write_emd(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    """EMD 1.0 as written by emdfile / py4DSTEM >= 0.13: root group, array groups with dim vectors."""
    import uuid

    import h5py

    from edgestem import __version__
    from edgestem.atomic import atomic_path

    def array(parent: Any, name: str, arr: np.ndarray, dim_names: tuple[str, ...], chunks: Any = None) -> None:
        g = parent.create_group(name)
        g.attrs["emd_group_type"] = "array"
        g.attrs["python_class"] = "Array"
        ds = g.create_dataset("data", data=arr, chunks=chunks)
        ds.attrs["units"] = ""
        for n, dim_name in enumerate(dim_names):
            dim = g.create_dataset(f"dim{n}", data=np.arange(2))  # linear dims are stored by 2 samples
            dim.attrs["name"] = dim_name
            dim.attrs["units"] = "pixels"

    with atomic_path(p) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["emd_group_type"] = "file"
            f.attrs["version_major"] = 1
            f.attrs["version_minor"] = 0
            f.attrs["UUID"] = str(uuid.uuid4())
            f.attrs["authoring_program"] = "edgestem"
            f.attrs["authoring_user"] = ""
            f.attrs["edgestem_version"] = __version__
            _set_h5_attrs(f, attrs)
            root = f.create_group("edgestem")
            root.attrs["emd_group_type"] = "root"
            root.attrs["python_class"] = "Root"
            array(root, "datacube", data, ("Rx", "Ry", "Qx", "Qy"), chunks=(1, 1, *data.shape[2:]))
            for k, v in labels.items():
                array(root, k, np.asarray(v, dtype=np.float64), ("Rx", "Ry"))


def _counts(p: Path, data: np.ndarray, kinds: tuple[str, ...]) -> np.ndarray:
    """``data`` as the smallest of the unsigned integer types ``kinds`` that holds it exactly."""
    if data.dtype.name in kinds:
        return data
    ok = data.size == 0 or (np.all(np.isfinite(data)) and data.min() >= 0 and np.all(data == np.round(data)))
    if ok:
        top = float(data.max()) if data.size else 0.0
        for kind in kinds:
            if top <= np.iinfo(kind).max:
                return data.astype(kind)
    raise DataError(
        f"{p}: {p.suffix} files store counts as {' or '.join(kinds)}; round and clip the data to that range first"
    )


def _write_mib(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    """A single-chip Merlin .mib (384-byte frame headers, big-endian counts) plus its .hdr file.

    Rows are stored bottom-up, as the detector does (readers flip them back).
    """
    from edgestem.atomic import atomic_path, write_text

    _no_labels(p, labels)
    counts = _counts(p, data, ("uint8", "uint16", "uint32"))
    rx, ry, qx, qy = counts.shape
    if max(qx, qy) > 9999:
        raise DataError(f"{p}: .mib patterns are at most 9999 pixels a side, got {qx}x{qy}")
    kind, depth = {"uint8": ("U08", 6), "uint16": ("U16", 12), "uint32": ("U32", 24)}[counts.dtype.name]
    now = time.gmtime()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", now)

    def header(n: int) -> bytes:
        fields = ["MQ1", f"{n:06d}", "00384", "01", f"{qy:04d}", f"{qx:04d}", kind, "   1x1", "01",
                  time.strftime("%Y-%m-%d %H:%M:%S.000000", now), "0.001000", "0", "0", "0",
                  *["0.000000E+0"] * 8, "3RX", "MQ1A", stamp, "1000000ns", str(depth), ""]  # fmt: skip
        return ",".join(fields).encode("ascii").ljust(384, b"\x00")

    hdr = (
        "HDR,\t\n"
        f"Time and Date Stamp (day, mnth, yr, hr, min, s):\t{time.strftime('%d/%m/%Y %H:%M:%S', now)}\n"
        "Assembly Size (NX1, 2X2):\t   1x1\n"
        f"Counter Depth (number):\t{depth}\n"
        f"Frames in Acquisition (Number):\t{rx * ry}\n"
        f"Frames per Trigger (Number):\t{ry}\n"
        "Acquisition Type (Normal, Th_scan, Config):\tNormal\n"
        "End\t\n"
    )
    write_text(p.with_suffix(".hdr"), hdr)
    frame = np.dtype([("header", "S384"), ("data", np.dtype(counts.dtype).newbyteorder(">"), (qx, qy))])
    with atomic_path(p) as tmp, open(tmp, "wb") as fp:
        for i in range(rx):
            row = np.zeros(ry, dtype=frame)
            row["header"] = [header(i * ry + j + 1) for j in range(ry)]
            row["data"] = counts[i, :, ::-1, :]
            row.tofile(fp)


def _write_empad(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    """EMPAD: an .xml description plus a .raw file of 128x130 float32 frames (2 footer rows)."""
    from edgestem.atomic import atomic_path, write_text

    _no_labels(p, labels)
    rx, ry, qx, qy = data.shape
    if (qx, qy) != (128, 128):
        raise DataError(f"{p}: EMPAD patterns are 128x128 pixels, got {qx}x{qy}; crop or pad the detector axes")
    raw = p.with_suffix(".raw")
    with atomic_path(raw) as tmp, open(tmp, "wb") as fp:
        for i in range(rx):
            frames = np.zeros((ry, 130, 128), dtype="<f4")
            frames[:, :128] = data[i]
            frames.tofile(fp)
    from xml.sax.saxutils import quoteattr

    xml = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f"<root><raw_file filename={quoteattr(raw.name)}/><pix_x>{ry}</pix_x><pix_y>{rx}</pix_y>"
        "<type>scan</type></root>\n"
    )
    write_text(p, xml)


def _rsciio_signal(data: Any, title: str, attrs: dict[str, Any], units: tuple[str, str] = ("", "")) -> dict[str, Any]:
    """The signal dictionary rsciio writers expect, navigation axes first."""
    axes = [
        {"name": name, "size": int(n), "index_in_array": i, "scale": 1.0, "offset": 0.0,
         "units": units[0] if i < 2 else units[1], "navigate": i < 2}
        for i, (name, n) in enumerate(zip(("Rx", "Ry", "Qx", "Qy"), data.shape, strict=True))
    ]  # fmt: skip
    return {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": title}, "Signal": {"signal_type": "electron_diffraction"}},
        "original_metadata": {_ATTRS_KEY: _to_json(attrs)} if attrs else {},
        "tmp_parameters": {},
        "attributes": {"_lazy": False},
        "package_info": {"name": "edgestem", "version": _edgestem_version()},
        "learning_results": {},
        "models": {},
    }


def _edgestem_version() -> str:
    from edgestem import __version__

    return str(__version__)


def _write_blo(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    """A blockfile (8-bit square patterns) through rosettasciio."""
    from edgestem.atomic import atomic_path

    _no_labels(p, labels)
    if data.shape[2] != data.shape[3]:
        raise DataError(f"{p}: blockfiles need square patterns, got {data.shape[2]}x{data.shape[3]}")
    counts = _counts(p, data, ("uint8",))
    module = _import_rsciio(".blo")
    with atomic_path(p) as tmp:
        module.file_writer(str(tmp), _rsciio_signal(counts, p.stem, {}, ("nm", "cm")), navigator=None,
                           show_progressbar=False)  # fmt: skip


def _write_hspy(p: Path, data: np.ndarray, labels: dict[str, np.ndarray], attrs: dict[str, Any], **_: Any) -> None:
    """HyperSpy's HDF5 format through rosettasciio, one pattern per chunk."""
    from edgestem.atomic import atomic_path

    _no_labels(p, labels)
    module = _import_rsciio(".hspy")
    with atomic_path(p) as tmp:
        module.file_writer(str(tmp), _rsciio_signal(data, p.stem, attrs), chunks=(1, 1, *data.shape[2:]),
                           compression=None, show_progressbar=False)  # fmt: skip


_WRITERS: dict[str, Any] = {
    ".h5": _write_hdf5,
    ".hdf5": _write_hdf5,
    ".hdf": _write_hdf5,
    ".emd": _write_emd,
    ".npy": _write_npy,
    ".npz": _write_npz,
    ".mat": _write_mat,
    ".mib": _write_mib,
    ".xml": _write_empad,
    ".blo": _write_blo,
    ".hspy": _write_hspy,
}
