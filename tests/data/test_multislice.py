"""Tests of the abTEM multislice engine: disk positions (F^-T G), rotation, labels, cache and resume, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgestem import strain
from edgestem.cli import app
from edgestem.config import load_config
from edgestem.crb import crb_multislice
from edgestem.data import multislice as ms_mod
from edgestem.data.multislice import reduce_mantissa

runner = CliRunner()

try:
    import abtem  # noqa: F401
    import ase  # noqa: F401

    HAVE_PHYSICS = True
except ImportError:
    HAVE_PHYSICS = False
physics = pytest.mark.skipif(not HAVE_PHYSICS, reason="needs the physics extra (abtem, ase)")

# A tiny case: 20 A box, 32 px, a few slices, one phonon configuration: about a second per pattern.
TINY = {
    "seed": 5,
    "simulate": {
        "engine": "abtem",
        "scan": [2, 2],
        "size": 32,
        "specimen": {"kind": "random", "strain_max": 0.03, "rotation_max_deg": 5.0},
        "multislice": {
            "crystal": "Si",
            "reciprocal_pixel": 0.05,
            "thickness_nm": 1.0,
            "frozen_phonons": 1,
            "phonon_pool": 1,
        },
    },
}


def _write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _centroids(pattern: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Intensity centroids (n, 2) within ``radius`` of each expected centre, above the local minimum."""
    q = pattern.shape[-1]
    i, j = np.meshgrid(np.arange(q), np.arange(q), indexing="ij")
    out = []
    for cx, cy in centres:
        m = (i - cx) ** 2 + (j - cy) ** 2 <= radius**2
        w = np.where(m, pattern - pattern[m].min(), 0.0)
        out.append([(w * i).sum() / w.sum(), (w * j).sum() / w.sum()])
    return np.array(out)


def _thin(crystal: str, size: int = 48) -> ms_mod.Geometry:
    """A thin static crystal (one repeat): nearly kinematic, flat disks, positions easy to measure."""
    cfg = load_config(
        None,
        {
            "simulate.multislice.crystal": crystal,
            "simulate.multislice.reciprocal_pixel": 0.03,
            "simulate.multislice.semiangle_mrad": 3.0,
            "simulate.multislice.thickness_nm": 0.5,
            "simulate.multislice.frozen_phonons": 0,
        },
    )
    return ms_mod.geometry(cfg.simulate.multislice, size)


def _first_order(geo: ms_mod.Geometry) -> np.ndarray:
    """Reciprocal vectors (n, 2) of the shortest allowed reflections, in detector pixels (undeformed)."""
    lat = ms_mod.zolz_lattice(geo)
    fold = lat["symmetry"]
    angles = np.radians(lat["orientation_deg"] + np.arange(fold) * 360.0 / fold)
    return lat["spacing_px"] * np.stack([np.cos(angles), np.sin(angles)], 1)


def test_reduce_mantissa_rounds_to_the_kept_bits() -> None:
    x = np.random.default_rng(0).lognormal(-10, 3, 10000).astype(np.float32)
    assert np.array_equal(reduce_mantissa(x, 23), x)
    for bits in (3, 10):
        r = reduce_mantissa(x, bits)
        rel = np.abs(r / x - 1)
        assert rel.max() <= 2.0 ** -(bits + 1) * (1 + 1e-6)
        mant = r.view(np.uint32) & np.uint32((1 << (23 - bits)) - 1)
        assert not mant.any()
    assert reduce_mantissa(np.float32([1.0 + 2**-4]), 3)[0] == np.float32(1.125)  # half rounds up
    # An absolute step for dim values: multiples of 2^-20 below 2^(-20 + bits), relative rounding above.
    r = reduce_mantissa(x, 8, -20)
    dim = x < 2.0 ** (-20 + 8)
    assert np.all(np.abs(r[dim] - x[dim]) <= 2.0**-21 * (1 + 1e-6))
    assert np.all(np.mod(r[dim] / 2.0**-20, 1.0) == 0)
    assert np.array_equal(r[~dim], reduce_mantissa(x, 8)[~dim])


def test_missing_extra_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "abtem", None)
    res = runner.invoke(app, ["simulate", "--engine", "abtem", "-o", str(tmp_path / "x.h5"), "-q"])
    assert res.exit_code == 2
    assert "edgestem[physics]" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


@physics
def test_presets_have_the_expected_symmetry() -> None:
    si = ms_mod.zolz_lattice(_thin("Si"))
    assert si["symmetry"] == 4 and si["kind"] == "square"
    assert si["spacing_px"] == pytest.approx(np.sqrt(8) / 5.431 / 0.03)  # 220: 200 is forbidden
    gan = ms_mod.zolz_lattice(_thin("GaN"))
    assert gan["symmetry"] == 6 and gan["kind"] == "hex"
    assert gan["spacing_px"] == pytest.approx(2 / (np.sqrt(3) * 3.189) / 0.03)
    au = ms_mod.zolz_lattice(_thin("Au"))
    assert au["symmetry"] == 6


@physics
@pytest.mark.parametrize("crystal", ["Si", "GaN"])
def test_disk_centres_sit_at_F_inverse_transpose_G(crystal: str) -> None:
    geo = _thin(crystal)
    g = _first_order(geo)
    c = (geo.size - 1) / 2
    F = strain.deformation_gradient(0.03, -0.02, 0.015, 12.0)
    pattern, detected = ms_mod.simulate_pattern(geo, F, 1, np.array([1, 2, 3], dtype=np.uint32))
    assert pattern.shape == (48, 48) and pattern.sum() == pytest.approx(1.0, rel=1e-5) and 0.9 < detected <= 1.0
    expected = g @ strain.affine_from_deformation(F).T + c
    err = np.hypot(*(_centroids(pattern, expected, geo.describe()["disk_radius_px"] + 1.5) - expected).T)
    assert err.max() < 0.2, err
    # The undeformed positions are wrong by far more than that (the test can fail).
    err0 = np.hypot(*(_centroids(pattern, g + c, geo.describe()["disk_radius_px"] + 1.5) - (g + c)).T)
    assert err0.min() > 1.0


@physics
def test_a_pure_rotation_turns_the_pattern_by_that_angle() -> None:
    geo = _thin("Si")
    g = _first_order(geo)
    c = (geo.size - 1) / 2
    seeds = np.array([4, 5, 6], dtype=np.uint32)
    angles = []
    for theta in (0.0, 9.0):
        p, _ = ms_mod.simulate_pattern(geo, strain.rotation_matrix(theta), 1, seeds)
        pos = _centroids(p, g @ strain.rotation_matrix(theta).T + c, geo.describe()["disk_radius_px"] + 1.5) - c
        angles.append(np.degrees(np.arctan2(pos[:, 1], pos[:, 0])))
    turn = (angles[1] - angles[0] + 180.0) % 360.0 - 180.0
    assert np.allclose(turn, 9.0, atol=0.3), turn


@physics
def test_cli_tiny_scan_labels_and_provenance(tmp_path: Path) -> None:
    out = tmp_path / "ms.h5"
    cfg_path = _write_config(tmp_path / "c.yaml", TINY)
    res = runner.invoke(app, ["simulate", "-c", str(cfg_path), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    cfg = load_config(cfg_path)
    with h5py.File(out) as f:
        data = f["data"][()]
        labels = {k: f["labels"][k][()] for k in ("exx", "eyy", "exy", "theta")}
        attrs = dict(f.attrs)
        thickness = f["specimen/thickness_nm"][()]
        seeds = f["specimen/seeds"][()]
    assert data.shape == (2, 2, 32, 32) and data.dtype == np.float32
    assert np.all(data >= 0) and np.allclose(data.sum(axis=(-2, -1)), 1.0, atol=1e-5)
    # The same labels as the kinematic engine for this config, and they round-trip through F.
    from edgestem.data.simulate import specimen_labels, specimen_rng

    want = specimen_labels(cfg.simulate, specimen_rng(cfg.seed))
    for k in labels:
        assert np.array_equal(labels[k], want[k])
    F = strain.deformation_gradient(labels["exx"], labels["eyy"], labels["exy"], labels["theta"])
    back = strain.strain_from_deformation(F)
    for k in labels:
        assert np.allclose(back[k], labels[k], atol=1e-12)
    assert attrs["engine"] == "abtem" and attrs["simulator"] == ms_mod.SIMULATOR
    versions = json.loads(attrs["versions"])
    assert versions["abtem"] == abtem.__version__ and versions["ase"] == ase.__version__
    params = json.loads(attrs["multislice"])
    assert params["crystal"] == "Si" and params["box_A"] == pytest.approx(20.0) and params["phonon_seed"] == 5
    assert json.loads(attrs["lattice"])["symmetry"] == 4
    assert np.allclose(thickness, 2 * 0.5431)  # 1 nm rounds to two repeats of 5.431 A
    assert seeds.shape == (2, 2, 3) and len({tuple(s) for s in seeds.reshape(-1, 3)}) == 4
    assert not ms_mod.cache_dir(cfg, out).exists()  # removed after a successful write
    # Different positions, different strains: different patterns.
    assert not np.allclose(data[0, 0], data[1, 1])


@physics
def test_resume_from_a_partial_cache_gives_identical_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(_write_config(tmp_path / "c.yaml", TINY))
    first = tmp_path / "first.h5"
    ms_mod.simulate_to_file(cfg, first, keep_cache=True)
    folder = ms_mod.cache_dir(cfg, first)
    # The cache of a killed run: two of the four patterns finished.
    second = tmp_path / "second.h5"
    partial = ms_mod.cache_dir(cfg, second)
    partial.mkdir()
    for name in ("r00000_00000.npz", "r00001_00001.npz"):
        (partial / name).write_bytes((folder / name).read_bytes())
    calls = []
    real = ms_mod.simulate_pattern

    def counting(geo, F, repeats, seeds):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(geo, F, repeats, seeds)

    monkeypatch.setattr(ms_mod, "simulate_pattern", counting)
    ticks = []
    ms_mod.simulate_to_file(cfg, second, progress=ticks.append)
    assert len(calls) == 2 and sum(ticks) == 4
    with h5py.File(first) as a, h5py.File(second) as b:
        assert a["data"][()].tobytes() == b["data"][()].tobytes()
        for k in ("exx", "eyy", "exy", "theta"):
            assert a["labels"][k][()].tobytes() == b["labels"][k][()].tobytes()


@physics
def test_cache_key_ignores_storage_but_not_physics(tmp_path: Path) -> None:
    cfg = load_config(_write_config(tmp_path / "c.yaml", TINY))
    base = ms_mod.cache_dir(cfg, tmp_path / "x.h5")
    packed = cfg.model_copy(deep=True)
    packed.simulate.multislice.gzip = 9
    packed.simulate.multislice.mantissa_bits = 4
    assert ms_mod.cache_dir(packed, tmp_path / "x.h5") == base
    thicker = cfg.model_copy(deep=True)
    thicker.simulate.multislice.thickness_nm = 2.0
    assert ms_mod.cache_dir(thicker, tmp_path / "x.h5") != base


@physics
def test_thickness_range_is_a_ramp_of_whole_repeats() -> None:
    cfg = load_config(None, {"simulate.multislice.thickness_nm": [10.0, 30.0]})
    t = ms_mod.thickness_map(cfg.simulate.multislice, (16, 16), 0, 5.431)
    reps = t * 10.0 / 5.431
    assert np.allclose(reps, np.rint(reps))
    assert t.min() == pytest.approx(10.0, abs=0.3) and t.max() == pytest.approx(30.0, abs=0.3)
    assert len(np.unique(t)) > 10


@physics
def test_unknown_crystal_is_a_config_error(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "simulate",
            "--engine",
            "abtem",
            "-o",
            str(tmp_path / "x.h5"),
            "-c",
            str(_write_config(tmp_path / "c.yaml", {"simulate": {"multislice": {"crystal": "Unobtainium"}}})),
        ],
    )
    assert res.exit_code == 2 and "neither a preset" in res.output


@physics
def test_engine_crb_is_stable_and_obeys_poisson_scaling(tmp_path: Path) -> None:
    cfg = load_config(_write_config(tmp_path / "c.yaml", TINY))
    a = crb_multislice(cfg, [(0, 1)], doses=(1e2, 1e4), binnings=(1, 2), step=1e-3)
    b = crb_multislice(cfg, [(0, 1)], doses=(1e2, 1e4), binnings=(1, 2), step=3e-4)
    for k in ("exx", "eyy", "exy", "theta"):
        fine, coarse = a["binning"]["1"], b["binning"]["1"]
        assert 0 < fine["10000"][k] < fine["100"][k]
        assert fine["100"][k] / fine["10000"][k] == pytest.approx(10.0)  # sigma ~ 1 / sqrt(dose)
        assert fine["10000"][k] == pytest.approx(coarse["10000"][k], rel=0.05)  # the derivative, not the step
        # Summing pixels cannot add information.
        assert a["binning"]["2"]["10000"][k] >= fine["10000"][k] * (1 - 1e-9)


@physics
@pytest.mark.slow
def test_worker_processes_give_the_same_bytes(tmp_path: Path) -> None:
    cfg = load_config(_write_config(tmp_path / "c.yaml", TINY))
    ms_mod.simulate_to_file(cfg, tmp_path / "one.h5", workers=1)
    ms_mod.simulate_to_file(cfg, tmp_path / "two.h5", workers=2)
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        assert a["data"][()].tobytes() == b["data"][()].tobytes()


@physics
def test_interrupt_keeps_finished_patterns_and_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_path = _write_config(tmp_path / "c.yaml", TINY)
    out = tmp_path / "ms.h5"
    real = ms_mod.simulate_pattern
    calls = []

    def interrupted_third(geo, F, repeats, seeds):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(geo, F, repeats, seeds)

    monkeypatch.setattr(ms_mod, "simulate_pattern", interrupted_third)
    res = runner.invoke(app, ["simulate", "-c", str(cfg_path), "-o", str(out), "-q"])
    assert res.exit_code == 130 and "run the same command again to resume" in res.output
    assert not out.exists()
    assert len(list(ms_mod.cache_dir(load_config(cfg_path), out).glob("*.npz"))) == 2
