"""Round trips, laziness and error messages of every 4D-STEM format in edgestem.data.io."""

from __future__ import annotations

import sys
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from edgestem.data.io import LABEL_KEYS, Dataset4D, _ReversedAxes, open_4dstem, write_4dstem
from edgestem.errors import DataError, ToolMissingError

SHAPE = (3, 4, 6, 5)  # non-square everywhere, so a swapped axis cannot pass unnoticed
ATTRS = {"seed": 7, "note": "Ångström µm 😀", "lattice_a": 3.905}


def _data(shape=SHAPE, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100).astype(dtype)


def _labels(shape=SHAPE[:2], seed=1):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=shape) for k in LABEL_KEYS}


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert path.name in msg, msg
    return msg


def _matlab_header() -> bytes:
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM"


def _write_matlab_like(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A v7.3 file laid out the way MATLAB writes it: every array stored with its axes reversed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in variables.items():
            ds = f.create_dataset(name, data=np.ascontiguousarray(arr.transpose()))
            ds.attrs.create("MATLAB_class", np.bytes_("single" if arr.dtype == np.float32 else "double"))
    with open(path, "r+b") as fp:
        fp.write(_matlab_header())


needs_rsciio = pytest.mark.io


def _rsciio():
    return pytest.importorskip("rsciio")


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize(
    "ext,kw",
    [(".h5", {}), (".hdf5", {}), (".hdf", {}), (".emd", {}), (".npz", {}),
     (".mat", {"mat_version": "7.3"}), (".mat", {"mat_version": "5"})],
    ids=["h5", "hdf5", "hdf", "emd", "npz", "mat73", "mat5"],
)  # fmt: skip
def test_round_trip_with_labels_and_attrs(tmp_path, ext, kw):
    data, labels = _data(), _labels()
    p = write_4dstem(tmp_path / f"x{ext}", data, labels, ATTRS, **kw)
    assert p.exists() and not list(tmp_path.glob(".x*"))  # no temp file left behind
    with open_4dstem(p) as ds:
        assert isinstance(ds, Dataset4D)
        assert ds.shape == SHAPE and ds.dtype == np.float32
        np.testing.assert_array_equal(ds[:], data)
        np.testing.assert_array_equal(ds.pattern(2, 1), data[2, 1])
        np.testing.assert_array_equal(ds[1, 2:4], data[1, 2:4])
        blocks = [block for _, block in ds.iter_rows(rows_per_chunk=2)]
        np.testing.assert_array_equal(np.concatenate(blocks), data)
        assert sorted(ds.labels) == sorted(LABEL_KEYS)
        for k in LABEL_KEYS:
            np.testing.assert_allclose(ds.labels[k], labels[k])
        for k, v in ATTRS.items():
            assert ds.attrs[k] == v


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int32])
def test_round_trip_npy_keeps_dtype(tmp_path, dtype):
    data = _data(dtype=dtype)
    p = write_4dstem(tmp_path / "x.npy", data)
    with open_4dstem(p) as ds:
        assert ds.dtype == dtype and ds.labels == {}
        np.testing.assert_array_equal(ds[:], data)


def test_npy_refuses_labels_rather_than_dropping_them(tmp_path):
    with pytest.raises(DataError) as e:
        write_4dstem(tmp_path / "x.npy", _data(), _labels())
    _one_line(e, tmp_path / "x.npy")
    assert not (tmp_path / "x.npy").exists()


def test_npz_compressed_and_key_choice(tmp_path):
    data = _data()
    p = tmp_path / "c.npz"
    np.savez_compressed(p, cube=data, exx=_labels()["exx"], other=np.ones(3))
    with open_4dstem(p) as ds:  # no "data" key: the only 4D array
        assert ds.source == "cube"
        np.testing.assert_array_equal(ds[2, 3], data[2, 3])
        assert list(ds.labels) == ["exx"]
    with open_4dstem(p, dataset="cube") as ds:
        assert ds.shape == SHAPE


def test_npz_uncompressed_is_memory_mapped(tmp_path):
    p = write_4dstem(tmp_path / "x.npz", _data())
    with open_4dstem(p) as ds:
        assert isinstance(ds._array, np.memmap)


def test_mat73_file_layout_is_matlab_compatible(tmp_path):
    data = _data()
    p = write_4dstem(tmp_path / "x.mat", data, _labels(), ATTRS)
    head = p.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file") and head[124:128] == b"\x00\x02IM"
    with h5py.File(p, "r") as f:
        assert f.userblock_size == 512
        assert f["data"].shape == SHAPE[::-1]  # column-major, as MATLAB stores it
        assert f["data"].attrs["MATLAB_class"] == b"single"
        assert f["exx"].attrs["MATLAB_class"] == b"double"
        assert f["edgestem_attrs"].attrs["MATLAB_class"] == b"char"
        np.testing.assert_array_equal(f["data"][()], data.transpose())


def test_mat5_is_readable_by_scipy(tmp_path):
    data = _data()
    p = write_4dstem(tmp_path / "x.mat", data, _labels(), mat_version="5")
    assert p.read_bytes()[:10] == b"MATLAB 5.0"
    np.testing.assert_array_equal(scipy.io.loadmat(p)["data"], data)


def test_matlab_transposed_layout_gives_rx_ry_qx_qy(tmp_path):
    """A variable of MATLAB size (Rx, Ry, Qx, Qy) appears in h5py as (Qy, Qx, Ry, Rx)."""
    orig = _data()
    exx = _labels()["exx"]
    p = tmp_path / "matlab.mat"
    _write_matlab_like(p, {"cube": orig, "exx": exx, "calib": np.ones((1, 1))})
    with h5py.File(p, "r") as f:
        assert f["cube"].shape == SHAPE[::-1]
    with open_4dstem(p) as ds:
        assert ds.shape == SHAPE and ds.source == "cube"
        for rx in range(SHAPE[0]):
            for ry in range(SHAPE[1]):
                np.testing.assert_array_equal(ds[rx, ry], orig[rx, ry])
        np.testing.assert_array_equal(ds[1], orig[1])
        np.testing.assert_array_equal(ds[0:2, ::2, 1:5], orig[0:2, ::2, 1:5])
        np.testing.assert_array_equal(ds[..., 3], orig[..., 3])
        np.testing.assert_array_equal(ds[-1, -2], orig[-1, -2])
        np.testing.assert_allclose(ds.labels["exx"], exx)


def test_reversed_axes_view_matches_numpy():
    orig = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    view = _ReversedAxes(np.ascontiguousarray(orig.transpose()))
    assert view.shape == SHAPE
    for idx in [
        (2, 3), (slice(None), 1), (slice(1, None, 2), slice(None, None, -1), 4),
        (Ellipsis, slice(4, 0, -2)), (slice(None, None, -1), 0, slice(0, 0)), -1, (np.int64(1), 2, 3, 4),
    ]:  # fmt: skip
        np.testing.assert_array_equal(view[idx], orig[idx])
    with pytest.raises(IndexError):
        view[3, 0]
    with pytest.raises(TypeError):
        view[[0, 1]]


# ---------------------------------------------------------------------------------------------
# EMD / py4DSTEM


def test_py4dstem_datacube_written_by_emdfile_just_opens(tmp_path):
    emdfile = pytest.importorskip("emdfile")
    data = _data()
    root = emdfile.Root(name="experiment")
    cube = emdfile.Array(data=data, name="datacube", dim_names=["Rx", "Ry", "Qx", "Qy"])
    root.add_to_tree(cube)
    cube.add_to_tree(emdfile.Array(data=data.mean(axis=(0, 1)), name="dp_mean"))
    p = tmp_path / "py4dstem.h5"
    emdfile.save(str(p), root, mode="o")
    with h5py.File(p, "a") as f:
        f["experiment/datacube"].attrs["python_class"] = "DataCube"  # as py4DSTEM tags its datacubes
        f["scratch/background"] = np.zeros((2, 2, 2, 2), np.float32)  # a 4D dataset outside EMD
    with open_4dstem(p) as ds:
        assert ds.source == "experiment/datacube/data"
        assert ds.shape == SHAPE
        np.testing.assert_array_equal(ds[:], data)
        assert ds.attrs["emd_group_type"] == "file"


def test_emd_written_by_edgestem_is_read_by_emdfile(tmp_path):
    emdfile = pytest.importorskip("emdfile")
    data = _data()
    p = write_4dstem(tmp_path / "x.emd", data, _labels())
    node = emdfile.read(str(p), emdpath="edgestem/datacube", tree=False)
    np.testing.assert_array_equal(node.data, data)
    assert list(node.dim_names) == ["Rx", "Ry", "Qx", "Qy"]


def test_old_emd_groups_are_found(tmp_path):
    """EMD files before emdfile: datacube groups tagged ``emd_group_type = 1`` with ``dim1..dimN``."""
    data = _data()
    p = tmp_path / "old.emd"
    with h5py.File(p, "w") as f:
        f.attrs["version_major"] = 0
        f.attrs["version_minor"] = 2
        g = f.create_group("4DSTEM_experiment/data/datacubes/datacube_0")
        g.attrs["emd_group_type"] = 1
        g["data"] = data
        for i, n in enumerate(data.shape, start=1):
            g[f"dim{i}"] = np.arange(n)
        f["4DSTEM_experiment/data/diffractionslices/dp/data"] = np.ones((6, 5))
        f["4DSTEM_experiment/processing/raw_copy"] = data  # a second 4D dataset, not an EMD group
    with open_4dstem(p) as ds:
        assert ds.source == "4DSTEM_experiment/data/datacubes/datacube_0/data"
        np.testing.assert_array_equal(ds[1, 1], data[1, 1])


def test_several_emd_datacubes_must_be_named(tmp_path):
    p = tmp_path / "two.emd"
    with h5py.File(p, "w") as f:
        for name in ("a", "b"):
            g = f.create_group(f"root/{name}")
            g.attrs["emd_group_type"] = "array"
            g["data"] = _data()
    with pytest.raises(DataError) as e:
        open_4dstem(p)
    msg = _one_line(e, p)
    assert "/root/a/data" in msg and "/root/b/data" in msg
    with open_4dstem(p, dataset="root/b/data") as ds:
        assert ds.shape == SHAPE


# ---------------------------------------------------------------------------------------------
# laziness


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    """A 64x64x64x64 float32 dataset (64 MiB) in each lazily read format."""
    d = tmp_path_factory.mktemp("big")
    data = np.random.default_rng(0).random((64, 64, 64, 64), dtype=np.float32)
    files = {ext: write_4dstem(d / f"big{ext}", data) for ext in (".h5", ".npy", ".mat", ".npz", ".emd")}
    return files, data[3, 5].copy()


@pytest.mark.parametrize("ext", [".h5", ".npy", ".mat", ".npz", ".emd"])
def test_reading_one_pattern_reads_only_that_pattern(big_files, ext):
    files, expected = big_files
    path = files[ext]
    assert path.stat().st_size > 60e6
    tracemalloc.start()
    try:
        with open_4dstem(path) as ds:
            pattern = ds[3, 5]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(pattern, expected)
    assert peak < 2e6, f"{ext}: reading one pattern allocated {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# bad input: one-line DataError naming the file


@pytest.mark.parametrize("ext", [".h5", ".emd", ".npy", ".npz", ".mat", ".mib", ".dm4", ".xml"])
def test_missing_file(tmp_path, ext):
    p = tmp_path / f"nope{ext}"
    with pytest.raises(DataError) as e:
        open_4dstem(p)
    assert "no such file" in _one_line(e, p)


def test_unknown_extension_and_directory(tmp_path):
    p = tmp_path / "x.tiff"
    p.write_bytes(b"II*\x00")
    with pytest.raises(DataError) as e:
        open_4dstem(p)
    assert ".npz" in _one_line(e, p)
    with pytest.raises(DataError) as e:
        open_4dstem(tmp_path)
    _one_line(e, tmp_path)


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    data = _data()
    out: dict[str, Path] = {}
    for name, kw in [("cut.h5", {}), ("cut.emd", {}), ("cut73.mat", {}), ("cut5.mat", {"mat_version": "5"}),
                     ("cutdata.npy", {}), ("cut.npz", {})]:  # fmt: skip
        full = write_4dstem(tmp_path / f"full_{name}", data, **kw)
        out[name] = tmp_path / name
        out[name].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    npy = write_4dstem(tmp_path / "ok.npy", data).read_bytes()
    out["header.npy"] = tmp_path / "header.npy"
    out["header.npy"].write_bytes(npy[:20] + b"garbage" + npy[27:])
    out["empty.npy"] = tmp_path / "empty.npy"
    out["empty.npy"].write_bytes(b"")
    out["notzip.npz"] = tmp_path / "notzip.npz"
    out["notzip.npz"].write_bytes(b"this is not a zip archive at all")
    out["textzip.npz"] = tmp_path / "textzip.npz"
    with zipfile.ZipFile(out["textzip.npz"], "w") as z:
        z.writestr("readme.txt", "hello")
    out["single.npz"] = tmp_path / "single.npz"  # an .npy file with the wrong extension
    out["single.npz"].write_bytes(npy)
    out["garbage.mat"] = tmp_path / "garbage.mat"
    out["garbage.mat"].write_bytes(b"\x00\x01" * 300)
    out["garbage.h5"] = tmp_path / "garbage.h5"
    out["garbage.h5"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"\xff" * 600)
    return out


CORRUPT = ["cut.h5", "cut.emd", "cut73.mat", "cut5.mat", "cutdata.npy", "cut.npz", "header.npy", "empty.npy",
           "notzip.npz", "textzip.npz", "single.npz", "garbage.mat", "garbage.h5"]  # fmt: skip


@pytest.mark.parametrize("name", CORRUPT)
def test_truncated_or_corrupt_file(tmp_path, name):
    p = _corrupt_files(tmp_path)[name]
    with pytest.raises(DataError) as e:
        with open_4dstem(p) as ds:
            ds[:]
    _one_line(e, p)


def test_corrupt_chunk_is_reported_when_read(tmp_path):
    p = tmp_path / "chunks.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("data", data=_data(), chunks=(1, 1, 6, 5), compression="gzip")
        info = f["data"].id.get_chunk_info(0)
    raw = bytearray(p.read_bytes())
    raw[info.byte_offset : info.byte_offset + info.size] = b"\xff" * info.size
    p.write_bytes(bytes(raw))
    with open_4dstem(p) as ds:
        np.testing.assert_array_equal(ds[2, 3], _data()[2, 3])  # other chunks still read
        with pytest.raises(DataError) as e:
            ds[0, 0]
    assert "corrupt" in _one_line(e, p)


def _write_raw(path: Path, arr: np.ndarray, name: str = "data") -> None:
    """Write ``arr`` as-is (no rank checks) in the format given by the extension."""
    if path.suffix == ".h5":
        with h5py.File(path, "w") as f:
            f[name] = arr
    elif path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix == ".npz":
        np.savez(path, **{name: arr})
    elif path.name.endswith("73.mat"):
        _write_matlab_like(path, {name: arr})
    else:
        scipy.io.savemat(path, {name: arr})


FORMATS = ["x.h5", "x.npy", "x.npz", "x73.mat", "x5.mat"]


@pytest.mark.parametrize("fname", FORMATS)
@pytest.mark.parametrize("shape", [(4, 6, 5), (2, 3, 4, 6, 5)], ids=["3D", "5D"])
def test_wrong_rank(tmp_path, fname, shape):
    p = tmp_path / fname
    _write_raw(p, np.ones(shape, np.float32))
    with pytest.raises(DataError) as e:
        open_4dstem(p, dataset=None if fname.endswith(".npy") else "data")
    assert f"rank {len(shape)}" in _one_line(e, p)


@pytest.mark.parametrize(
    "fname,arr",
    [("s.h5", np.full((2, 2, 3, 3), b"ab")), ("u.npy", np.full((2, 2, 3, 3), "ab")),
     ("b.npz", np.ones((2, 2, 3, 3), bool)), ("c.npz", np.ones((2, 2, 3, 3), complex)),
     ("c73.mat", np.zeros((2, 2, 3, 3), dtype=[("re", "<f8"), ("im", "<f8")]))],
)  # fmt: skip
def test_non_numeric_dtype(tmp_path, fname, arr):
    p = tmp_path / fname
    _write_raw(p, arr)
    with pytest.raises(DataError) as e:
        open_4dstem(p)
    assert "type" in _one_line(e, p)


@pytest.mark.parametrize("fname", ["x.h5", "x.npz", "x73.mat", "x5.mat", "x.emd"])
def test_named_dataset_that_does_not_exist(tmp_path, fname):
    p = tmp_path / fname
    if fname.endswith(".emd"):
        write_4dstem(p, _data())
    else:
        _write_raw(p, _data(), name="cube")
    with pytest.raises(DataError) as e:
        open_4dstem(p, dataset="nope")
    msg = _one_line(e, p)
    assert "'nope'" in msg and ("cube" in msg or "datacube" in msg)


@pytest.mark.parametrize("fname", ["x.h5", "x.npz", "x73.mat", "x5.mat"])
def test_no_4d_array_lists_what_is_there(tmp_path, fname):
    p = tmp_path / fname
    _write_raw(p, np.ones((4, 4)), name="image")
    with pytest.raises(DataError) as e:
        open_4dstem(p)
    assert "image" in _one_line(e, p)


def test_write_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError):
        write_4dstem(tmp_path / "x.h5", np.ones((2, 3, 4)))
    with pytest.raises(DataError):
        write_4dstem(tmp_path / "x.tiff", _data())
    with pytest.raises(DataError):
        write_4dstem(tmp_path / "x.mat", _data(), mat_version="6")
    with pytest.raises(DataError):
        write_4dstem(tmp_path / "x.h5", _data(), {"exx": np.ones((2, 2))})
    with pytest.raises(DataError) as e:
        write_4dstem(tmp_path / "x.mib", _data() + 0.5)  # not counts
    _one_line(e, tmp_path / "x.mib")
    with pytest.raises(DataError):
        write_4dstem(tmp_path / "x.xml", _data())  # EMPAD is 128x128
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------------------------------------
# detector formats through rosettasciio


@pytest.fixture
def no_rsciio(monkeypatch):
    """Make ``import rsciio`` fail as if the optional extra were not installed."""
    for name in [m for m in sys.modules if m == "rsciio" or m.startswith("rsciio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rsciio", None)


@pytest.mark.parametrize("ext", [".mib", ".dm3", ".dm4", ".xml", ".blo", ".hspy"])
def test_rsciio_missing_is_a_tool_missing_error(tmp_path, no_rsciio, ext):
    p = tmp_path / f"scan{ext}"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(ToolMissingError) as e:
        open_4dstem(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == f"reading {ext} files needs the optional 'io' extra: pip install 'edgestem[io]'"


def test_rsciio_missing_when_writing(tmp_path, no_rsciio):
    with pytest.raises(ToolMissingError):
        write_4dstem(tmp_path / "x.hspy", _data())


@needs_rsciio
def test_mib_round_trip(tmp_path):
    _rsciio()
    data = _data(dtype=np.uint16)
    p = write_4dstem(tmp_path / "scan.mib", data)
    assert p.stat().st_size == data.shape[0] * data.shape[1] * (384 + 6 * 5 * 2)
    assert p.with_suffix(".hdr").exists()
    with open_4dstem(p) as ds:
        assert ds.shape == SHAPE
        np.testing.assert_array_equal(ds[2, 3], data[2, 3])
        np.testing.assert_array_equal(ds[:], data)
        assert "Merlin" in ds.attrs["format"]


@needs_rsciio
def test_mib_without_scan_shape_is_a_data_error(tmp_path):
    _rsciio()
    p = write_4dstem(tmp_path / "scan.mib", _data(dtype=np.uint8))
    p.with_suffix(".hdr").unlink()  # the frame headers alone do not say how the scan was laid out
    with pytest.raises(DataError) as e:
        open_4dstem(p)
    assert ".hdr" in _one_line(e, p)


@needs_rsciio
def test_empad_round_trip(tmp_path):
    _rsciio()
    data = _data((2, 3, 128, 128))
    p = write_4dstem(tmp_path / "empad.xml", data)
    assert p.with_suffix(".raw").stat().st_size == 2 * 3 * 130 * 128 * 4
    with open_4dstem(p) as ds:
        assert ds.shape == (2, 3, 128, 128)
        np.testing.assert_array_equal(ds[1, 2], data[1, 2])
        assert [a["name"] for a in ds.attrs["axes"]] == ["scan_y", "scan_x", "height", "width"]


@needs_rsciio
def test_blockfile_round_trip(tmp_path):
    _rsciio()
    pytest.importorskip("skimage")
    data = _data((3, 4, 8, 8), dtype=np.uint8)
    p = write_4dstem(tmp_path / "scan.blo", data)
    with open_4dstem(p) as ds:
        assert ds.shape == (3, 4, 8, 8)
        np.testing.assert_array_equal(ds[:], data)


@needs_rsciio
def test_blockfile_without_scikit_image(tmp_path, monkeypatch):
    _rsciio()
    for name in [m for m in sys.modules if m.startswith("rsciio.blockfile") or m.startswith("skimage")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "skimage", None)
    p = tmp_path / "scan.blo"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(ToolMissingError) as e:
        open_4dstem(p)
    assert "scikit-image" in str(e.value)


@needs_rsciio
def test_hspy_round_trip_with_attrs(tmp_path):
    _rsciio()
    data = _data()
    p = write_4dstem(tmp_path / "scan.hspy", data, attrs=ATTRS)
    with open_4dstem(p) as ds:
        assert ds.shape == SHAPE
        np.testing.assert_array_equal(ds[:], data)
        np.testing.assert_array_equal(ds[0, 1:3], data[0, 1:3])
        for k, v in ATTRS.items():
            assert ds.attrs[k] == v


@needs_rsciio
def test_dm4_axes_mapped_from_rsciio_navigation_flags(tmp_path, monkeypatch):
    """No DM writer exists: feed the reader's output format and check the axis mapping."""
    _rsciio()
    da = pytest.importorskip("dask.array")
    import rsciio.digitalmicrograph

    orig = _data()
    stored = da.from_array(np.ascontiguousarray(orig.transpose(2, 3, 0, 1)), chunks=(6, 5, 1, 1))
    names = ["kx", "ky", "y", "x"]
    axes = [
        {
            "name": n,
            "size": s,
            "index_in_array": i,
            "scale": 0.5,
            "offset": 0.0,
            "units": "nm",
            "navigate": i >= 2,
        }
        for i, (n, s) in enumerate(zip(names, stored.shape, strict=True))
    ]
    thumb = {"data": np.zeros((8, 8)), "axes": [], "metadata": {"General": {"title": "thumbnail"}}}
    cube = {"data": stored, "axes": axes, "metadata": {"General": {"title": "4D"}}}
    monkeypatch.setattr(rsciio.digitalmicrograph, "file_reader", lambda f, lazy=False: [thumb, cube])
    p = tmp_path / "scan.dm4"
    p.write_bytes(b"\x00" * 16)
    with open_4dstem(p) as ds:
        assert ds.shape == SHAPE and ds.attrs["title"] == "4D"
        assert [a["name"] for a in ds.attrs["axes"]] == ["y", "x", "kx", "ky"]
        np.testing.assert_array_equal(ds[2, 3], orig[2, 3])
        assert isinstance(ds[0, 0], np.ndarray)
    with pytest.raises(DataError) as e:
        open_4dstem(p, dataset="nope")
    assert "thumbnail" in _one_line(e, p)
    with pytest.raises(DataError) as e:
        open_4dstem(p, dataset="thumbnail")
    _one_line(e, p)


@needs_rsciio
def test_rsciio_reader_failure_is_a_data_error(tmp_path):
    _rsciio()
    p = tmp_path / "broken.mib"
    p.write_bytes(b"not a merlin header" * 30)
    with pytest.raises(DataError) as e:
        open_4dstem(p)
    _one_line(e, p)


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".emd", ".mat"])
def test_data_writer_writes_the_format_its_extension_names(tmp_path, suffix):
    """simulate and noise stream through data_writer: every output opens again as written."""
    from edgestem.data.io import data_writer

    rng = np.random.default_rng(0)
    x = rng.random((3, 4, 8, 8)).astype(np.float32)
    labels = {k: rng.random((3, 4)) for k in LABEL_KEYS}
    out = tmp_path / f"x{suffix}"
    with data_writer(out, x.shape, attrs={"note": "hi"}) as w:
        for r in range(3):
            w.write(slice(r, r + 1), x[r : r + 1])
        w.set_labels(labels)
    with open_4dstem(out) as ds:
        np.testing.assert_array_equal(ds[:], x)
        np.testing.assert_allclose(ds.labels["exx"], labels["exx"])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_data_writer_refuses_unknown_formats(tmp_path):
    from edgestem.data.io import check_writable_format, data_writer
    from edgestem.errors import DataError

    with pytest.raises(DataError, match=r"cannot write '\.tif' files; give one of .*\.h5"):
        with data_writer(tmp_path / "x.tif", (1, 1, 4, 4)):
            pass
    with pytest.raises(DataError, match="cannot hold the strain labels"):
        check_writable_format(tmp_path / "x.npy", labels=True)
    check_writable_format(tmp_path / "x.npy")
    assert not list(tmp_path.iterdir())


def test_edgestem_hdf5_is_also_an_emd_file(tmp_path):
    """simulate/noise output opens in emdfile (py4DSTEM's reader): datacube and labels, stored once."""
    emdfile = pytest.importorskip("emdfile")
    from edgestem.data.io import hdf5_writer

    x = np.random.default_rng(1).random((3, 4, 8, 8)).astype(np.float32)
    labels = {k: np.full((3, 4), i, dtype=np.float64) for i, k in enumerate(LABEL_KEYS)}
    out = tmp_path / "x.h5"
    with hdf5_writer(out, x.shape) as w:
        w.write(slice(None), x)
        w.set_labels(labels)
    cube = emdfile.read(out, emdpath="edgestem/datacube")
    np.testing.assert_array_equal(cube.data, x)
    np.testing.assert_array_equal(emdfile.read(out, emdpath="edgestem/theta").data, labels["theta"])
    with h5py.File(out) as f:
        assert f["edgestem/datacube/data"].id == f["data"].id  # a hard link, not a copy
    with open_4dstem(out) as ds:  # edgestem's own reading is unchanged
        assert ds.source == "data" and set(ds.labels) == set(LABEL_KEYS)


def _calibrated_emd(path, x):
    """A calibrated datacube as py4DSTEM writes it: EMD dim vectors with steps and units."""
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "file"
        f.attrs["version_major"] = 1
        f.attrs["version_minor"] = 0
        root = f.create_group("root")
        root.attrs["emd_group_type"] = "root"
        root.attrs["python_class"] = "Root"
        g = root.create_group("datacube")
        g.attrs["emd_group_type"] = "array"
        g.attrs["python_class"] = "DataCube"
        g.create_dataset("data", data=x).attrs["units"] = "counts"
        for n, (name, step, units) in enumerate([("R_x", 0.5, "nm"), ("R_y", 0.5, "nm"), ("Q_x", 0.02, "A^-1")]):
            d = g.create_dataset(f"dim{n}", data=np.array([0.0, step]))
            d.attrs["name"], d.attrs["units"] = name, units
        d = g.create_dataset("dim3", data=np.array([0.0, 0.02]))
        d.attrs["name"], d.attrs["units"] = "Q_y", "A^-1"
    return path


def test_calibration_is_read_and_carried_through(tmp_path):
    """Scan step and reciprocal pixel of an EMD input survive `edgestem noise` into the EMD tree."""
    emdfile = pytest.importorskip("emdfile")
    from edgestem.config import NoiseConfig
    from edgestem.data.io import calibration_of
    from edgestem.data.noise import add_noise_to_file

    x = np.random.default_rng(0).random((3, 4, 16, 16)).astype(np.float32)
    src = _calibrated_emd(tmp_path / "cal.emd", x)
    with open_4dstem(src) as ds:
        cal = calibration_of(ds.attrs)
    assert [(a["scale"], a["units"]) for a in cal] == [(0.5, "nm"), (0.5, "nm"), (0.02, "A^-1"), (0.02, "A^-1")]
    out = add_noise_to_file(src, tmp_path / "n.h5", NoiseConfig(model="dose", dose=100), seed=1)
    with open_4dstem(out) as ds:
        assert calibration_of(ds.attrs) == cal
    cube = emdfile.read(out, emdpath="edgestem/datacube")
    assert cube.dims[0][1] == 0.5 and tuple(cube.dim_units) == ("nm", "nm", "A^-1", "A^-1")
    assert calibration_of({"axes": [{"scale": 1.0, "units": "<undefined>"}] * 4}) is None  # pixels only
