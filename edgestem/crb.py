"""The physical limit of strain mapping: the Cramer-Rao lower bound (docs/science.md, "The physical limit").

For the parameters ``p = (exx, eyy, exy, theta)`` of one pattern, the Fisher information under
Poisson noise is ``I_ab = sum_pixels (d lambda / d p_a)(d lambda / d p_b) / lambda`` with the
expected counts ``lambda = counts * ((1 - w) DP(p) + w B)`` (``w = 0``: the pure dose model of
:mod:`edgestem.data.noise`; ``B`` its Lorentzian background). ``DP(p)`` is the built-in simulator
itself (disks MOVE to ``g' = F^-T g`` and keep their radius, the central beam is static, the pattern
sums to 1) and its derivatives are central finite differences of the simulator in ``p``; the pattern
is never warped as a whole (that credits information to a deforming central beam: trap 1 of
docs/science.md, "The physical limit").

The standard deviation of an ideal unbiased estimator is ``sigma_a = sqrt(inv(I)_aa)``; its expected
absolute error is ``sqrt(2 / pi) sigma_a``. Strain is reported in %, theta in degrees.

Pixels whose expected count is below ``min_fraction`` of the pattern's counts are EXCLUDED from the
sum: that removes the pixels with ``lambda = 0`` (outside every disk when ``w = 0``) and the pixels
at the edge of a disk's compact support, whose finite-difference derivative straddles the support's
kink and whose information is negligible (the bound moves by far less than 1 % between
``min_fraction = 1e-12`` and ``1e-8``; checked in ``tests/test_crb.py``).

Measured on the default hex patterns (64 px, strain U(-2, 2) %, theta U(-3, 3) deg): exx/eyy/exy
0.018/0.019/0.013 % and theta 0.0076 deg at 1e5 counts (w = 0), 0.032/0.032/0.023 % at w = 0.5;
binning 2 x 2 raises it 1.15x (1.25x with 0.25 px disk edges at 128 px), 4 x 4 about 1.5x; warping
the whole pattern instead gives a bound 0.73-0.85x of this one (0.56x with a large bright central
beam). 64 patterns take about 0.3 s.

The simulator is evaluated in float64 through the same private rendering steps that
:func:`edgestem.data.simulate.render_patterns` uses (that function returns float32, whose rounding
would dominate finite differences with steps of 1e-4); a test checks that the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edgestem import strain
from edgestem.config import Config, LatticeConfig
from edgestem.data import simulate as sim
from edgestem.data.noise import lorentzian_background


def crb_multislice(
    cfg: Config,
    positions: list[tuple[int, int]],
    doses: tuple[float, ...] = (1e2, 1e3, 1e4),
    binnings: tuple[int, ...] = (1, 2),
    step: float = 1e-3,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Cramer-Rao bound of ``cfg``'s multislice patterns at scan ``positions``, by finite differences.

    Each parameter (exx, eyy, exy, theta) is moved by +-``step`` about the position's label and the
    engine run again with the same seeds (shift, thickness), in double precision; the Poisson Fisher
    information and the expected MAE of an ideal unbiased estimator come from
    :mod:`edgestem.crb` (the kinematic bound's math, in this module). The lattice is static here (frozen phonons
    off): a displaced configuration is drawn per atom of the box, and the atoms in the box change
    with F, so phonon draws cannot be held fixed between the perturbed patterns. Returns
    ``{"binning": {b: {dose: {component: mae}}}, ...}`` (strain in %, theta in degrees).
    """
    from edgestem import strain
    from edgestem.data.multislice import (
        Geometry,
        geometry,
        position_seeds,
        require_physics,
        simulate_pattern,
        thickness_map,
    )
    from edgestem.data.simulate import specimen_labels, specimen_rng

    require_physics()
    sim, ms = cfg.simulate, cfg.simulate.multislice
    geo = geometry(ms, sim.size)
    geo = Geometry(**{**geo.__dict__, "frozen_phonons": 0})
    labels = specimen_labels(sim, specimen_rng(cfg.seed))
    phonon_seed = int(ms.phonon_seed if ms.phonon_seed is not None else cfg.seed)
    thick = thickness_map(ms, tuple(sim.scan), phonon_seed, geo.period)
    seeds = position_seeds(phonon_seed, tuple(sim.scan))
    lam = []
    steps = np.zeros(4)
    for i, j in positions:
        F = strain.deformation_gradient(*(labels[k][i, j] for k in ("exx", "eyy", "exy", "theta")))
        Fs, steps = perturbed_deformations(F[None], step)
        reps = int(round(thick[i, j] * 10.0 / geo.period))
        lam.append(np.stack([simulate_pattern(geo, f, reps, seeds[i, j], float64=True)[0] for f in Fs[0]]))
        if progress is not None:
            progress(1)
    lam_arr = np.stack(lam)  # (n, 9, Q, Q), each summing to 1: expected counts for one electron
    out: dict[str, Any] = {"positions": [list(p) for p in positions], "step": step, "binning": {}}
    for b in binnings:
        info1 = fisher_from_patterns(lam_arr, steps, 1.0, binning=b)
        out["binning"][str(b)] = {f"{d:g}": mae_from_fisher(info1 * d) for d in doses}
    out["thickness_nm"] = [float(thick[i, j]) for i, j in positions]
    return out


__all__ = [
    "crb_multislice",
    "PARAMS",
    "render64",
    "expected_counts",
    "fisher_information",
    "perturbed_deformations",
    "fisher_from_patterns",
    "mae_from_fisher",
    "crb_sigma",
    "crb_mae",
]

PARAMS = ("exx", "eyy", "exy", "theta")


def render64(F: np.ndarray, lat: LatticeConfig, size: int, rng_seed: int = 0) -> np.ndarray:
    """The simulator's patterns (N, size, size) in float64, each summing to 1 (same model as render_patterns)."""
    F = np.asarray(F, dtype=float)
    if F.ndim != 3 or F.shape[1:] != (2, 2):
        raise ValueError(f"F must have shape (N, 2, 2), got {F.shape}")
    A = strain.affine_from_deformation(F)
    g = sim.reciprocal_lattice(lat, size)
    amp = sim.disk_intensities(g, lat)
    modes = None
    if lat.intensity_variation > 0:
        modes = sim._draw_modes(np.random.default_rng(rng_seed), F.shape[0], lat, size)
    out = sim._render_batch(A, g, amp, lat, size, modes) + sim._central_beam(lat, size)
    return out / out.sum(axis=(-2, -1), keepdims=True)


def _bin(x: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor x factor`` pixel blocks of (..., Q, Q) arrays (the detector cropped to a multiple)."""
    if factor == 1:
        return x
    qx, qy = x.shape[-2] // factor * factor, x.shape[-1] // factor * factor
    x = x[..., :qx, :qy]
    return x.reshape(*x.shape[:-2], qx // factor, factor, qy // factor, factor).sum(axis=(-3, -1))


def expected_counts(
    F: np.ndarray, lat: LatticeConfig, size: int, counts: float, w: float = 0.0, hwhm_px: float = 2.0
) -> np.ndarray:
    """``lambda = counts ((1 - w) DP + w B)`` of deformations ``F`` (N, 2, 2): (N, size, size) float64."""
    dp = render64(F, lat, size)
    if w > 0:
        dp = (1.0 - w) * dp + w * lorentzian_background(size, hwhm_px)
    return float(counts) * dp


def fisher_information(
    F: np.ndarray,
    lat: LatticeConfig,
    size: int,
    counts: float,
    w: float = 0.0,
    hwhm_px: float = 2.0,
    step: float = 1e-4,
    binning: int = 1,
    min_fraction: float = 1e-10,
) -> np.ndarray:
    """Fisher information (N, 4, 4) of (exx, eyy, exy, theta[deg]) per pattern under Poisson noise.

    Derivatives: central differences of the simulator with step ``step`` in strain (a fraction) and
    ``step`` radians (converted to degrees) in theta. ``binning``: sum ``binning x binning`` pixel
    blocks of the expected pattern before computing the information (what a binned detector sees).
    """
    F = np.asarray(F, dtype=float)
    if F.ndim == 2:
        F = F[None]
    if not 0.0 <= w < 1.0:
        raise ValueError(f"background weight w must be in [0, 1), got {w}")
    if counts <= 0 or step <= 0 or binning < 1:
        raise ValueError("counts and step must be positive and binning >= 1")
    Fs, steps = perturbed_deformations(F, step)
    n = F.shape[0]
    lam = expected_counts(Fs.reshape(-1, 2, 2), lat, size, counts, w, hwhm_px).reshape(n, 9, size, size)
    return fisher_from_patterns(lam, steps, counts, binning, min_fraction)


def perturbed_deformations(F: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """``F`` (N, 2, 2) and its central-difference neighbours: (N, 9, 2, 2) and the 4 steps.

    Index 0 is ``F`` itself, ``1 + 2a`` / ``2 + 2a`` parameter ``a`` (exx, eyy, exy, theta) plus /
    minus its step (``step`` in strain, ``step`` radians in theta, expressed in degrees).
    """
    p0 = strain.strain_from_deformation(np.asarray(F, dtype=float))
    base = np.stack([p0[k] for k in PARAMS], axis=-1)  # (N, 4)
    steps = np.array([step, step, step, math.degrees(step)])
    P = np.repeat(base[:, None, :], 9, axis=1)
    for a in range(4):
        P[:, 1 + 2 * a, a] += steps[a]
        P[:, 2 + 2 * a, a] -= steps[a]
    return strain.deformation_gradient(P[..., 0], P[..., 1], P[..., 2], P[..., 3]), steps


def fisher_from_patterns(
    lam: np.ndarray, steps: np.ndarray, counts: float, binning: int = 1, min_fraction: float = 1e-10
) -> np.ndarray:
    """Poisson Fisher information (N, 4, 4) from expected counts (N, 9, Q, Q) at :func:`perturbed_deformations`.

    Shared by the kinematic bound and the bound of any other engine (e.g. multislice): only the
    patterns differ. ``binning`` sums pixel blocks first; pixels below ``min_fraction * counts`` are
    left out.
    """
    lam = _bin(np.asarray(lam, dtype=float), int(binning))
    centre = lam[:, 0]
    deriv = np.stack([(lam[:, 1 + 2 * a] - lam[:, 2 + 2 * a]) / (2.0 * steps[a]) for a in range(4)], axis=1)
    keep = centre > min_fraction * float(counts)
    weight = np.divide(keep, centre, out=np.zeros_like(centre), where=keep)
    return np.einsum("napq,nbpq,npq->nab", deriv, deriv, weight)


def mae_from_fisher(info: np.ndarray) -> dict[str, float]:
    """Expected MAE ``sqrt(2/pi) sigma`` (strain in %, theta in degrees) averaged over patterns (N, 4, 4)."""
    sigma = np.sqrt(np.diagonal(np.linalg.inv(info), axis1=-2, axis2=-1)) * np.array([100.0, 100.0, 100.0, 1.0])
    mae = math.sqrt(2.0 / math.pi) * sigma.mean(axis=0)
    return {k: float(v) for k, v in zip(PARAMS, mae, strict=True)}


def crb_sigma(
    F: np.ndarray,
    lat: LatticeConfig,
    size: int,
    counts: float,
    w: float = 0.0,
    hwhm_px: float = 2.0,
    step: float = 1e-4,
    binning: int = 1,
    min_fraction: float = 1e-10,
) -> np.ndarray:
    """Per-pattern standard deviations (N, 4) of an ideal unbiased estimator: strain in %, theta in deg."""
    info = fisher_information(F, lat, size, counts, w, hwhm_px, step, binning, min_fraction)
    cov = np.linalg.inv(info)
    sigma = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    return sigma * np.array([100.0, 100.0, 100.0, 1.0])


def crb_mae(
    F: np.ndarray,
    lat: LatticeConfig,
    size: int,
    counts: float,
    w: float = 0.0,
    hwhm_px: float = 2.0,
    step: float = 1e-4,
    binning: int = 1,
    min_fraction: float = 1e-10,
) -> dict[str, float]:
    """Expected MAE ``sqrt(2/pi) sigma`` of an ideal unbiased estimator, averaged over the N patterns.

    Keys ``exx, eyy, exy`` (%) and ``theta`` (degrees).
    """
    sigma = crb_sigma(F, lat, size, counts, w, hwhm_px, step, binning, min_fraction)
    mae = math.sqrt(2.0 / math.pi) * sigma.mean(axis=0)
    return {k: float(v) for k, v in zip(PARAMS, mae, strict=True)}
