"""Tests of the kinematic simulator: disk positions (F^-T), radii, symmetry, labels, determinism, files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import yaml
from scipy.ndimage import maximum_filter, minimum_filter

from edgestem import strain
from edgestem.config import Config, LatticeConfig, NoiseConfig, SimulateConfig, SpecimenConfig, load_config
from edgestem.data.io import open_4dstem
from edgestem.data.noise import add_noise_to_file
from edgestem.data.simulate import (
    disk_intensities,
    reciprocal_lattice,
    render_patterns,
    simulate,
    simulate_to_file,
    specimen_labels,
    symmetry_fold,
)

Q = 64
C = (Q - 1) / 2
# (exx, eyy, exy, theta): up to 3 % strain and 25 deg rotation.
CASES = [
    (0.03, -0.02, 0.01, 25.0),
    (-0.025, 0.03, -0.02, -15.0),
    (0.02, 0.02, 0.0, 5.0),
    (0.0, 0.0, 0.03, -25.0),
]


def _centroid_errors(pattern: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Distance between each expected centre and the intensity centroid within ``radius`` of it."""
    i, j = np.meshgrid(np.arange(Q), np.arange(Q), indexing="ij")
    errs = []
    for cx, cy in centres:
        w = pattern * ((i - cx) ** 2 + (j - cy) ** 2 <= radius**2)
        errs.append(np.hypot((w * i).sum() / w.sum() - cx, (w * j).sum() / w.sum() - cy))
    return np.array(errs)


@pytest.mark.parametrize("kind", ["hex", "square"])
def test_disks_move_as_F_inverse_transpose(kind: str) -> None:
    lat = LatticeConfig(kind=kind, spacing_px=14.0, orientation_deg=7.0)
    g1 = reciprocal_lattice(lat, Q)[: symmetry_fold(lat)]
    assert np.allclose(np.hypot(g1[:, 0], g1[:, 1]), 14.0)
    F = strain.deformation_gradient(*np.array(CASES).T)
    pats = render_patterns(F, lat, Q)
    A = strain.affine_from_deformation(F)
    radius = lat.disk_radius_px + 3.0  # covers the whole disk support; neighbours are > 13 px away
    for n in range(len(CASES)):
        good = _centroid_errors(pats[n], g1 @ A[n].T + C, radius)
        assert good.max() < 0.01, (CASES[n], good)  # pixel-integrated edges: ~0.001 px
        if CASES[n][0] or CASES[n][1] or CASES[n][2]:
            wrong = _centroid_errors(pats[n], g1 @ F[n].T + C, radius)  # the wrong convention g' = F g
            assert wrong.max() > 0.2, (CASES[n], wrong)


def test_axes_follow_the_strain_convention() -> None:
    """np.rot90 (counter-clockwise from kx to ky) of a square pattern = rendering with R F R^T."""
    lat = LatticeConfig(kind="square", orientation_deg=0.0)
    F = strain.deformation_gradient(0.03, -0.01, 0.02, 4.0)
    R = strain.rotation_matrix(90.0)
    a, b = render_patterns(np.stack([F, R @ F @ R.T]), lat, Q)
    assert np.abs(np.rot90(a) - b).max() < 1e-7 * a.max() * 10
    # A pure strain exx > 0 (real-space expansion along x) pulls the disks on the kx axis inwards.
    p = render_patterns(strain.deformation_gradient(0.03, 0.0, 0.0, 0.0)[None], lat, Q)[0]
    i = np.arange(Q) - C
    row = p[:, int(C)] + p[:, int(C) + 1]
    right = (i > 5) & (i < 17)
    assert (row[right] * i[right]).sum() / row[right].sum() == pytest.approx(11.0 / 1.03, abs=0.05)


def test_disks_keep_their_radius_under_strain() -> None:
    lat = LatticeConfig(kind="square", spacing_px=20.0, central_beam=1.0)
    F = strain.deformation_gradient([0.0, 0.03, -0.03], [0.0, 0.03, -0.03], 0.0, [0.0, 3.0, -2.0])
    pats = render_patterns(F, lat, Q)
    A = strain.affine_from_deformation(F)
    g = reciprocal_lattice(lat, Q)[0]
    i, j = np.meshgrid(np.arange(Q), np.arange(Q), indexing="ij")
    areas = []
    for n in range(3):
        cx, cy = A[n] @ g + C
        w = pats[n] * ((i - cx) ** 2 + (j - cy) ** 2 <= 6.0**2)
        areas.append(w.sum() / w.max())  # effective area: integrated intensity / plateau
    # Area of a disk whose edge is a tanh (variance pi^2 e^2 / 12) integrated over a pixel (1 / 12).
    e = lat.disk_edge_px
    assert areas[0] == pytest.approx(np.pi * (lat.disk_radius_px**2 + np.pi**2 * e**2 / 12 + 1 / 12), rel=0.01)
    # A warped disk would change area by det(A) (about 6 % here); moved disks keep it.
    assert np.allclose(areas[1:], areas[0], rtol=0.02)


def test_hex_pattern_has_sixfold_symmetry() -> None:
    for base in (0.0, 17.0):
        lat = LatticeConfig(kind="hex", orientation_deg=base)
        rot = LatticeConfig(kind="hex", orientation_deg=base + 60.0)
        g = reciprocal_lattice(lat, Q)
        g_rot = g @ strain.rotation_matrix(60.0).T
        d = np.linalg.norm(g_rot[:, None, :] - g[None, :, :], axis=-1).min(axis=1)
        assert d.max() < 1e-9  # the disk set maps onto itself
        F = np.eye(2)[None]
        assert np.abs(render_patterns(F, lat, Q) - render_patterns(F, rot, Q)).max() < 1e-7
        # Rotating by 30 deg (not a symmetry) changes the pattern.
        off = LatticeConfig(kind="hex", orientation_deg=base + 30.0)
        assert np.abs(render_patterns(F, lat, Q) - render_patterns(F, off, Q)).max() > 1e-3


def test_square_pattern_has_fourfold_symmetry() -> None:
    for orientation in (0.0, 13.0):
        p = render_patterns(np.eye(2)[None], LatticeConfig(kind="square", orientation_deg=orientation), Q)[0]
        assert np.abs(np.rot90(p) - p).max() < 1e-7 * 10 * p.max()
        assert np.abs(p.T - p).max() > 1e-4 * p.max() or orientation == 0.0


def test_reciprocal_lattice_and_intensities() -> None:
    for kind, fold in (("hex", 6), ("square", 4)):
        lat = LatticeConfig(kind=kind)
        g = reciprocal_lattice(lat, Q)
        r = np.hypot(g[:, 0], g[:, 1])
        assert r.min() > 0 and np.isclose(r[:fold], lat.spacing_px).all() and not np.isclose(r[fold], r[0])
        assert r.max() >= 1.3 * Q * np.sqrt(2) / 2  # far disks included
        amp = disk_intensities(g, lat)
        assert amp.max() == 1.0 and np.allclose(amp[:fold], 1.0)
        assert np.all(np.diff(amp) <= 1e-12)  # sorted by |g| -> non-increasing


def test_patterns_normalised_nonnegative_and_bright_centre() -> None:
    rng = np.random.default_rng(0)
    F = strain.deformation_gradient(*rng.uniform(-0.02, 0.02, (3, 50)), rng.uniform(-5, 5, 50))
    for lat in (LatticeConfig(), LatticeConfig(kind="square", intensity_variation=0.5)):
        p = render_patterns(F, lat, Q, np.random.default_rng(1))
        assert p.dtype == np.float32 and p.shape == (50, Q, Q)
        assert p.min() >= 0
        assert np.allclose(p.sum(axis=(1, 2)), 1.0, atol=1e-5)
        if lat.intensity_variation == 0:
            centre = p[:, 31:33, 31:33].max(axis=(1, 2))
            assert np.all(centre == p.max(axis=(1, 2)))  # the central beam is the brightest disk


def test_intensity_variation_is_random_and_seeded() -> None:
    lat = LatticeConfig(intensity_variation=0.3)
    F = np.repeat(np.eye(2)[None], 2, axis=0)
    a = render_patterns(F, lat, Q, np.random.default_rng(5))
    b = render_patterns(F, lat, Q, np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-4  # each pattern's disks get their own modulation
    flat = render_patterns(F, LatticeConfig(), Q)
    assert np.abs(a[0] - flat[0]).max() > 1e-4


def _sim(kind: str, **specimen: object) -> SimulateConfig:
    return SimulateConfig(scan=(32, 24), specimen=SpecimenConfig(kind=kind, **specimen))


def _check_ranges(lab: dict[str, np.ndarray], strain_max: float, theta_max: float) -> None:
    assert set(lab) == {"exx", "eyy", "exy", "theta"}
    for k, v in lab.items():
        assert v.shape == (32, 24) and v.dtype == np.float64
        assert np.abs(v).max() <= (theta_max if k == "theta" else strain_max) + 1e-12


def test_polycrystal_labels() -> None:
    sp = {"n_grains": 6, "strain_states": 3, "grain_rotation_deg": 20.0, "rotation_max_deg": 0.0}
    sharp = specimen_labels(_sim("polycrystal", boundary_px=0.0, **sp), np.random.default_rng(3))
    _check_ranges(sharp, 0.02, 20.0)
    assert len(np.unique(sharp["theta"])) == 6
    states = {tuple(s) for s in np.stack([sharp[k] for k in ("exx", "eyy", "exy")], -1).reshape(-1, 3)}
    assert 1 <= len(states) <= 3
    smooth = specimen_labels(_sim("polycrystal", boundary_px=0.7, **sp), np.random.default_rng(3))
    _check_ranges(smooth, 0.02, 20.0)
    # Away from boundaries (7 x 7 neighbourhood in one grain) smoothing changes nothing.
    t = sharp["theta"]
    interior = minimum_filter(t, 7, mode="nearest") == maximum_filter(t, 7, mode="nearest")
    assert interior.sum() > 0.3 * t.size
    for k in sharp:
        assert np.allclose(smooth[k][interior], sharp[k][interior], atol=1e-9)
    assert len(np.unique(np.round(smooth["theta"][interior], 9))) >= 4
    assert not np.allclose(smooth["theta"], sharp["theta"])  # boundaries are smoothed
    bent = specimen_labels(
        _sim("polycrystal", boundary_px=0.0, **{**sp, "rotation_max_deg": 3.0}), np.random.default_rng(3)
    )
    _check_ranges(bent, 0.02, 23.0)
    assert len(np.unique(bent["theta"])) > 6  # in-grain rotation variation
    assert np.array_equal(bent["exx"], sharp["exx"])


@pytest.mark.parametrize("field", ["gradient", "bump", "sinusoid"])
def test_smooth_labels(field: str) -> None:
    lab = specimen_labels(_sim("smooth", field=field, strain_max=0.02, rotation_max_deg=3.0), np.random.default_rng(0))
    _check_ranges(lab, 0.02, 3.0)
    for k, v in lab.items():
        amp = 3.0 if k == "theta" else 0.02
        assert np.ptp(v) > 0.3 * amp  # not flat
        step = max(np.abs(np.diff(v, axis=0)).max(), np.abs(np.diff(v, axis=1)).max())
        assert step < 0.25 * amp  # smooth
    assert not np.allclose(lab["exx"], lab["eyy"]) and not np.allclose(lab["exx"], lab["exy"])


def test_random_labels_uncorrelated() -> None:
    lab = specimen_labels(_sim("random", strain_max=0.02, rotation_max_deg=3.0), np.random.default_rng(0))
    _check_ranges(lab, 0.02, 3.0)
    for v in lab.values():
        assert abs(np.corrcoef(v[:-1].ravel(), v[1:].ravel())[0, 1]) < 0.15
        assert abs(np.corrcoef(v[:, :-1].ravel(), v[:, 1:].ravel())[0, 1]) < 0.15
    assert abs(np.corrcoef(lab["exx"].ravel(), lab["eyy"].ravel())[0, 1]) < 0.15


def _cfg(**kw: object) -> Config:
    base = {
        "seed": 4,
        "simulate": {"scan": [9, 5], "size": 32, "lattice": {"spacing_px": 8.0, "intensity_variation": 0.2}},
        "noise": {"model": "background", "w": 0.3, "read_noise": 0.5, "hot_pixels": 0.01},
    }
    base.update(kw)
    return Config.model_validate(base)


def _collect(cfg: Config, rows_per_block: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    labels, blocks = simulate(cfg, rows_per_block=rows_per_block)
    rx, ry = cfg.simulate.scan
    out = np.full((rx, ry, cfg.simulate.size, cfg.simulate.size), np.nan, dtype=np.float32)
    for rows, block in blocks:
        out[rows] = block
    return labels, out


def test_determinism_and_chunking_independence() -> None:
    cfg = _cfg()
    lab_a, a = _collect(cfg)
    lab_b, b = _collect(cfg, rows_per_block=1)
    _, c = _collect(cfg, rows_per_block=4)
    assert not np.isnan(a).any() and a.dtype == np.float32
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert all(np.array_equal(lab_a[k], lab_b[k]) for k in lab_a)
    lab_d, d = _collect(_cfg(seed=5))
    assert not np.array_equal(a, d) and not np.array_equal(lab_a["exx"], lab_d["exx"])
    assert a.min() >= 0


def test_progress_counts_rows() -> None:
    seen: list[int] = []
    _, blocks = simulate(_cfg(), progress=seen.append, rows_per_block=4)
    for _ in blocks:
        pass
    assert sum(seen) == 9


def test_simulate_to_file_layout(tmp_path: object) -> None:
    cfg = _cfg()
    out = simulate_to_file(cfg, tmp_path / "sim.h5")  # type: ignore[operator]
    _, expected = _collect(cfg)
    with h5py.File(out, "r") as f:
        d = f["data"]
        assert d.shape == (9, 5, 32, 32) and d.dtype == np.float32 and d.chunks == (1, 1, 32, 32)
        assert np.array_equal(d[()], expected)
        assert sorted(f["labels"]) == ["exx", "exy", "eyy", "theta"]
        attrs = dict(f.attrs)
    assert attrs["seed"] == 4 and attrs["simulator"] == "edgestem kinematic" and "edgestem_version" in attrs
    assert json.loads(attrs["noise"])["w"] == 0.3
    lattice = json.loads(attrs["lattice"])
    assert lattice["symmetry"] == 6 and lattice["spacing_px"] == 8.0 and lattice["kind"] == "hex"
    assert json.loads(attrs["specimen"])["kind"] == "polycrystal"
    assert json.loads(attrs["units"])["theta"] == "degree"
    assert Config.model_validate(yaml.safe_load(attrs["config"])) == cfg
    cfg_path = tmp_path / "cfg.yaml"  # type: ignore[operator]
    cfg_path.write_text(attrs["config"])
    assert load_config(cfg_path) == cfg
    with open_4dstem(out) as ds:
        assert ds.labels["theta"].shape == (9, 5)
        lab, _ = simulate(cfg)
        assert all(np.array_equal(ds.labels[k], lab[k]) for k in lab)


def test_noiseless_file_sums_to_one(tmp_path: object) -> None:
    cfg = _cfg(noise={"model": "none"})
    out = simulate_to_file(cfg, tmp_path / "clean.h5")  # type: ignore[operator]
    with open_4dstem(out) as ds:
        data = ds[()]
    assert data.min() >= 0 and np.allclose(data.sum(axis=(-2, -1)), 1.0, atol=1e-5)


def test_simulated_noise_equals_noise_added_later(tmp_path: object) -> None:
    """Noise is seeded per scan row: simulating with noise = simulating clean, then add_noise_to_file."""
    noise = {"model": "dose", "dose": 500.0, "read_noise": 0.3, "hot_pixels": 0.01}
    noisy = simulate_to_file(_cfg(noise=noise), tmp_path / "noisy.h5")  # type: ignore[operator]
    clean = simulate_to_file(_cfg(noise={"model": "none"}), tmp_path / "clean.h5")  # type: ignore[operator]
    later = add_noise_to_file(clean, tmp_path / "later.h5", NoiseConfig(**noise), seed=4)  # type: ignore[operator]
    with open_4dstem(noisy) as a, open_4dstem(later) as b:
        assert np.array_equal(a[()], b[()])
