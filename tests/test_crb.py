"""The Cramer-Rao bound of edgestem.crb: scaling, monotonicity, numerics, and the warping trap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from edgestem import crb, strain
from edgestem.config import LatticeConfig
from edgestem.data.simulate import render_patterns


@pytest.fixture(scope="module")
def deformations() -> np.ndarray:
    rng = np.random.default_rng(0)
    n = 8
    return strain.deformation_gradient(
        rng.uniform(-0.02, 0.02, n), rng.uniform(-0.02, 0.02, n), rng.uniform(-0.02, 0.02, n), rng.uniform(-3, 3, n)
    )


def _vec(d: dict[str, float]) -> np.ndarray:
    return np.array([d[k] for k in crb.PARAMS])


def test_render64_is_the_simulator(deformations):
    lat = LatticeConfig()
    np.testing.assert_allclose(crb.render64(deformations, lat, 64), render_patterns(deformations, lat, 64), atol=1e-8)


@pytest.mark.parametrize("w", [0.0, 0.5])
def test_bound_scales_exactly_as_inverse_sqrt_counts(deformations, w):
    lat = LatticeConfig()
    lo = _vec(crb.crb_mae(deformations, lat, 64, 1e3, w=w))
    hi = _vec(crb.crb_mae(deformations, lat, 64, 1e5, w=w))
    np.testing.assert_allclose(lo / hi, 10.0, rtol=1e-9)


def test_background_raises_the_bound(deformations):
    lat = LatticeConfig()
    b0 = _vec(crb.crb_mae(deformations, lat, 64, 1e4, w=0.0))
    b25 = _vec(crb.crb_mae(deformations, lat, 64, 1e4, w=0.25))
    b50 = _vec(crb.crb_mae(deformations, lat, 64, 1e4, w=0.5))
    assert np.all(b0 < b25) and np.all(b25 < b50)


def test_binning_does_not_lower_the_bound(deformations):
    lat = LatticeConfig()
    b1 = _vec(crb.crb_mae(deformations, lat, 64, 1e4))
    b2 = _vec(crb.crb_mae(deformations, lat, 64, 1e4, binning=2))
    assert np.all(b2 >= b1 * 1.05)  # measured: 1.15x for the default 64 px patterns


def test_finite_differences_are_converged(deformations):
    lat = LatticeConfig()
    a = _vec(crb.crb_mae(deformations, lat, 64, 1e4, step=1e-4))
    b = _vec(crb.crb_mae(deformations, lat, 64, 1e4, step=1e-5))
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_excluded_empty_pixels_carry_no_information(deformations):
    lat = LatticeConfig()
    a = _vec(crb.crb_mae(deformations, lat, 64, 1e4, min_fraction=1e-12))
    b = _vec(crb.crb_mae(deformations, lat, 64, 1e4, min_fraction=1e-8))
    np.testing.assert_allclose(a, b, rtol=1e-3)


def test_sigma_per_pattern_and_fisher_shape(deformations):
    lat = LatticeConfig()
    info = crb.fisher_information(deformations, lat, 64, 1e4)
    assert info.shape == (len(deformations), 4, 4)
    np.testing.assert_allclose(info, np.swapaxes(info, 1, 2), rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(info) > 0)
    sigma = crb.crb_sigma(deformations, lat, 64, 1e4)
    mae = _vec(crb.crb_mae(deformations, lat, 64, 1e4))
    np.testing.assert_allclose(math.sqrt(2 / math.pi) * sigma.mean(axis=0), mae)


def _warp_bound(F: np.ndarray, lat: LatticeConfig, size: int, counts: float, step: float = 1e-4) -> np.ndarray:
    """The WRONG bound: the undeformed pattern warped as a whole (central beam and disk radii deform too)."""
    ref = crb.render64(np.eye(2)[None], lat, size)[0]
    c = (size - 1) / 2
    k = np.stack(np.mgrid[0:size, 0:size].astype(float)) - c

    def pattern(p: np.ndarray) -> np.ndarray:
        A = strain.affine_from_deformation(strain.deformation_gradient(*p))
        out = ndimage.map_coordinates(ref, np.einsum("ij,jab->iab", np.linalg.inv(A), k) + c, order=3)
        return counts * out / out.sum()

    steps = np.array([step, step, step, math.degrees(step)])
    sig = []
    for f in F:
        p0 = strain.strain_from_deformation(f)
        p0 = np.array([p0[key] for key in crb.PARAMS])
        lam = pattern(p0)
        d = np.array(
            [
                (pattern(p0 + steps * e) - pattern(p0 - steps * e)) / (2 * s)
                for e, s in zip(np.eye(4), steps, strict=True)
            ]
        )
        wts = np.where(lam > 1e-10 * counts, 1.0 / np.maximum(lam, 1e-300), 0.0)
        info = np.einsum("apq,bpq,pq->ab", d, d, wts)
        sig.append(np.sqrt(np.diag(np.linalg.inv(info))))
    return math.sqrt(2 / math.pi) * np.mean(sig, axis=0) * np.array([100.0, 100.0, 100.0, 1.0])


def test_warping_the_whole_pattern_is_too_optimistic(deformations):
    """Trap 1 of docs/science.md ("The physical limit"): a deforming central beam credits false information."""
    F = deformations[:2]
    lat = LatticeConfig()
    ratio = _warp_bound(F, lat, 64, 1e4) / _vec(crb.crb_mae(F, lat, 64, 1e4))
    assert np.all(ratio[:2] < 0.9)  # measured 0.73-0.78 for exx, eyy
    # A large bright central beam next to dim disks makes the wrong bound much more optimistic.
    big = LatticeConfig(central_beam=20.0, falloff_px=8.0, disk_radius_px=6.0, spacing_px=14.0)
    ratio_big = _warp_bound(F, big, 64, 1e4) / _vec(crb.crb_mae(F, big, 64, 1e4))
    assert np.all(ratio_big[:3] < ratio[:3] - 0.05)  # measured 0.56-0.68
