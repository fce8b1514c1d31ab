"""Kinematic 4D-STEM simulator with strain labels (docs/science.md, "The built-in simulator").

Each pattern is a lattice of soft-edged Bragg disks. A deformation ``F = R(theta) (I + eps)`` moves
the diffracted disks to ``g' = A g`` with ``A = F^-T`` (:func:`edgestem.strain.affine_from_deformation`);
every disk keeps the probe aperture's radius (disks move, they are not warped) and the central beam
stays where it is. Patterns are ``(Qx, Qy)`` with axis -2 = kx, axis -1 = ky and the centre at
``((Q - 1) / 2, (Q - 1) / 2)`` (the convention of :mod:`edgestem.strain`). Each pattern sums to 1.

Randomness: generators seeded by ``(cfg.seed, stream id[, scan row])``: specimen labels, intensity
variation inside disks and noise use distinct streams, and everything drawn per scan row is seeded
by the row, so the output does not depend on how the scan is chunked. Same config, same bytes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from edgestem import strain
from edgestem.config import Config, LatticeConfig, SimulateConfig, SpecimenConfig, dump_config
from edgestem.data import noise as noise_mod
from edgestem.data.io import LABEL_KEYS, data_writer
from edgestem.seeds import STREAMS

__all__ = [
    "SPECIMEN_STREAM",
    "DISK_STREAM",
    "SIMULATOR",
    "symmetry_fold",
    "reciprocal_lattice",
    "disk_intensities",
    "disk_profile",
    "render_patterns",
    "specimen_labels",
    "specimen_rng",
    "disk_rng",
    "simulate",
    "file_attrs",
    "simulate_to_file",
]

SPECIMEN_STREAM = STREAMS["specimen"]
DISK_STREAM = STREAMS["disks"]
SIMULATOR = "edgestem kinematic"

# The disk profile is cut at R + 1/2 + _SUPPORT_EDGES edge widths (where its tail is 4.5e-5) and
# shifted to reach zero there continuously: each disk has compact support, so it is evaluated only in
# a small window around its centre, and windows of disks that do not overlap never interact.
_SUPPORT_EDGES = 5.0
# Patterns rendered per vectorised batch (bounds the memory of the window arrays to about 100 MB).
_BATCH = 256
# Basis functions of the intensity variation inside a disk: u, v, u^2 - v^2, 2uv, u^2 + v^2 - 1/2 in
# units of the radius; over a uniform unit disk their variances sum to 11/12, so this scale makes the
# relative RMS modulation equal to ``intensity_variation``.
_N_MODES = 5
_MODE_SCALE = 1.0 / math.sqrt(11.0 / 12.0)


def symmetry_fold(lat: LatticeConfig) -> int:
    """Rotation symmetry of the lattice: 6 (hex) or 4 (square)."""
    return 6 if lat.kind == "hex" else 4


def _support(lat: LatticeConfig) -> float:
    """Radius beyond which a disk's profile is exactly zero, pixels."""
    return lat.disk_radius_px + 0.5 + _SUPPORT_EDGES * lat.disk_edge_px


def _logcosh(x: np.ndarray) -> np.ndarray:
    """``log(cosh(x))`` without overflow."""
    x = np.abs(x)
    return x + np.log1p(np.exp(-2.0 * x)) - math.log(2.0)


def _edge(d: np.ndarray, edge: float) -> np.ndarray:
    """``0.5 (1 - tanh(d / edge))`` averaged over ``d +- 1/2`` (one detector pixel), in closed form."""
    return 0.5 - 0.5 * edge * (_logcosh((d + 0.5) / edge) - _logcosh((d - 0.5) / edge))


def disk_profile(r: np.ndarray, lat: LatticeConfig) -> np.ndarray:
    """Soft-edged disk ``0.5 (1 - tanh((r - R) / edge))`` integrated over a pixel, peak 1, compact support.

    The pixel integration (a box of one pixel across the edge, in closed form) is what a detector
    does; it also removes most of the aliasing of point sampling: the centroid of a sampled disk
    with a 0.5 px edge is off by up to 0.01 px with point sampling, 0.001 px with this profile.
    """
    d = np.asarray(r, dtype=float) - lat.disk_radius_px
    p = _edge(d, lat.disk_edge_px)
    p_cut = float(_edge(np.array(0.5 + _SUPPORT_EDGES * lat.disk_edge_px), lat.disk_edge_px))
    return np.maximum((p - p_cut) / (1.0 - p_cut), 0.0)


def reciprocal_lattice(lat: LatticeConfig, size: int, margin: float = 1.3) -> np.ndarray:
    """Reciprocal lattice points ``(n_g, 2)`` (kx, ky) in pixels from the centre, g = 0 excluded.

    Includes every point with ``|g| <= margin * size * sqrt(2) / 2 + support`` (support = disk radius
    plus its soft edge), i.e. every disk that can touch the detector after a deformation that
    shrinks ``|g|`` by less than ``1 / margin``. Ordered by ``|g|``, then angle.
    """
    s = float(lat.spacing_px)
    if lat.kind == "hex":
        basis = s * np.array([[1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])
        shortest = s * math.sqrt(3.0) / 2.0
    else:
        basis = s * np.eye(2)
        shortest = s
    g_max = margin * size * math.sqrt(2.0) / 2.0 + _support(lat)
    n_max = int(math.ceil(g_max / shortest)) + 1
    n = np.arange(-n_max, n_max + 1)
    n1, n2 = np.meshgrid(n, n, indexing="ij")
    g = n1.reshape(-1, 1) * basis[0] + n2.reshape(-1, 1) * basis[1]
    g = g @ strain.rotation_matrix(lat.orientation_deg).T
    r = np.hypot(g[:, 0], g[:, 1])
    keep = (r > 1e-9 * s) & (r <= g_max)
    g, r = g[keep], r[keep]
    angle = np.mod(np.arctan2(g[:, 1], g[:, 0]) - math.radians(lat.orientation_deg), 2 * math.pi)
    order = np.lexsort((np.round(angle, 9), np.round(r / s, 9)))
    return g[order]


def disk_intensities(g: np.ndarray, lat: LatticeConfig) -> np.ndarray:
    """Disk intensities ``exp(-|g|^2 / (2 falloff^2))`` scaled so the brightest disk is 1 (|g| only)."""
    g2 = np.sum(np.asarray(g, dtype=float) ** 2, axis=-1)
    if g2.size == 0:
        return g2
    return np.exp(-(g2 - g2.min()) / (2.0 * lat.falloff_px**2))


def _central_beam(lat: LatticeConfig, size: int) -> np.ndarray:
    """The static (000) disk at the pattern centre, peak ``lat.central_beam``."""
    k = np.arange(size) - (size - 1) / 2
    r = np.hypot(k[:, None], k[None, :])
    return lat.central_beam * disk_profile(r, lat)


def _render_batch(
    A: np.ndarray, g: np.ndarray, amp: np.ndarray, lat: LatticeConfig, size: int, modes: np.ndarray | None
) -> np.ndarray:
    """Diffracted disks of ``A`` (n, 2, 2) scatter-added into (n, size, size) float64 (not normalised)."""
    n = A.shape[0]
    c = (size - 1) / 2
    rc = _support(lat)
    h = int(math.ceil(rc + 0.5))
    offs = np.arange(-h, h + 1)
    pos = np.einsum("nij,gj->ngi", A, g) + c
    visible = np.all((pos > -rc) & (pos < size - 1 + rc), axis=-1)
    ni, gi = np.nonzero(visible)
    p = pos[ni, gi]
    centre = np.rint(p).astype(np.int64)
    ix = centre[:, 0, None] + offs
    iy = centre[:, 1, None] + offs
    dx = ix - p[:, 0, None]
    dy = iy - p[:, 1, None]
    val = disk_profile(np.sqrt(dx[:, :, None] ** 2 + dy[:, None, :] ** 2), lat)
    val *= amp[gi][:, None, None]
    if modes is not None:
        u = dx[:, :, None] / lat.disk_radius_px
        v = dy[:, None, :] / lat.disk_radius_px
        m = modes[ni, gi]
        field = (
            m[:, 0, None, None] * u
            + m[:, 1, None, None] * v
            + m[:, 2, None, None] * (u * u - v * v)
            + m[:, 3, None, None] * (2.0 * u * v)
            + m[:, 4, None, None] * (u * u + v * v - 0.5)
        )
        val *= np.maximum(1.0 + (lat.intensity_variation * _MODE_SCALE) * field, 0.0)
    inside = ((ix >= 0) & (ix < size))[:, :, None] & ((iy >= 0) & (iy < size))[:, None, :]
    flat = (ni[:, None, None] * size + np.clip(ix, 0, size - 1)[:, :, None]) * size + np.clip(iy, 0, size - 1)[
        :, None, :
    ]
    out = np.bincount(flat.ravel(), weights=(val * inside).ravel(), minlength=n * size * size)
    return out.reshape(n, size, size)


def _render(F: np.ndarray, lat: LatticeConfig, size: int, modes: np.ndarray | None) -> np.ndarray:
    """Patterns of deformations ``F`` (N, 2, 2) given pre-drawn modulation coefficients (N, n_g, 5)."""
    F = np.asarray(F, dtype=float)
    if F.ndim != 3 or F.shape[1:] != (2, 2):
        raise ValueError(f"F must have shape (N, 2, 2), got {F.shape}")
    A = strain.affine_from_deformation(F)
    g = reciprocal_lattice(lat, size)
    amp = disk_intensities(g, lat)
    beam = _central_beam(lat, size)
    out = np.empty((F.shape[0], size, size), dtype=np.float32)
    for b0 in range(0, F.shape[0], _BATCH):
        sl = slice(b0, min(F.shape[0], b0 + _BATCH))
        block = _render_batch(A[sl], g, amp, lat, size, None if modes is None else modes[sl])
        block += beam
        block /= block.sum(axis=(-2, -1), keepdims=True)
        out[sl] = block
    return out


def _draw_modes(rng: np.random.Generator, n: int, lat: LatticeConfig, size: int) -> np.ndarray | None:
    """Random coefficients (n, n_g, 5) of the intensity variation inside disks (None without it)."""
    if lat.intensity_variation <= 0:
        return None
    return rng.standard_normal((n, reciprocal_lattice(lat, size).shape[0], _N_MODES))


def render_patterns(F: np.ndarray, lat: LatticeConfig, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Noiseless float32 patterns (N, size, size), each summing to 1, for deformations F (N, 2, 2).

    Diffracted disks sit at ``A g`` with ``A = F^-T`` and keep their radius; the central beam is
    static. With ``lat.intensity_variation > 0`` each disk of each pattern gets a smooth random
    modulation drawn from ``rng`` (None: ``np.random.default_rng(0)``).
    """
    F = np.asarray(F, dtype=float)
    modes = None
    if lat.intensity_variation > 0:
        modes = _draw_modes(rng if rng is not None else np.random.default_rng(0), F.shape[0], lat, size)
    return _render(F, lat, size, modes)


def specimen_rng(seed: int) -> np.random.Generator:
    """Generator of the specimen labels (stream ``SPECIMEN_STREAM``)."""
    return np.random.default_rng([int(seed), SPECIMEN_STREAM])


def disk_rng(seed: int, row: int) -> np.random.Generator:
    """Generator of the intensity variation inside disks for scan row ``row`` (stream ``DISK_STREAM``)."""
    return np.random.default_rng([int(seed), DISK_STREAM, int(row)])


def _scan_coords(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Scan coordinates in [0, 1] along Rx and Ry (0 for a length-1 axis), shape (Rx, Ry) each."""
    x = np.arange(shape[0]) / max(shape[0] - 1, 1)
    y = np.arange(shape[1]) / max(shape[1] - 1, 1)
    return np.meshgrid(x, y, indexing="ij")


def _polycrystal(sp: SpecimenConfig, shape: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Voronoi grains: a rotation per grain, one of ``strain_states`` strains, smoothed boundaries."""
    seeds = rng.uniform(0.0, 1.0, size=(sp.n_grains, 2)) * np.array(shape, dtype=float) - 0.5
    grain_theta = rng.uniform(-sp.grain_rotation_deg, sp.grain_rotation_deg, size=sp.n_grains)
    states = rng.uniform(-sp.strain_max, sp.strain_max, size=(sp.strain_states, 3))
    grain_state = rng.integers(0, sp.strain_states, size=sp.n_grains)
    ramp_dir = rng.uniform(0.0, 2 * math.pi, size=sp.n_grains)
    ix, iy = np.meshgrid(np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float), indexing="ij")
    d2 = (ix[..., None] - seeds[:, 0]) ** 2 + (iy[..., None] - seeds[:, 1]) ** 2
    grain = np.argmin(d2, axis=-1)
    eps = states[grain_state[grain]]
    theta = grain_theta[grain].astype(float)
    if sp.rotation_max_deg > 0:
        # In-grain rotation: a linear ramp across each grain in a random direction, reaching
        # +-rotation_max_deg at the grain's extreme pixels (a gently bent grain).
        proj = (ix - seeds[grain, 0]) * np.cos(ramp_dir[grain]) + (iy - seeds[grain, 1]) * np.sin(ramp_dir[grain])
        for k in range(sp.n_grains):
            sel = grain == k
            if sel.any():
                extent = np.abs(proj[sel]).max()
                if extent > 0:
                    theta[sel] += sp.rotation_max_deg * proj[sel] / extent
    labels = {"exx": eps[..., 0], "eyy": eps[..., 1], "exy": eps[..., 2], "theta": theta}
    if sp.boundary_px > 0:
        # Smoothing the label fields (not the patterns) keeps labels and patterns consistent. theta is
        # smoothed linearly, without wrapping: fine while |theta| stays below half the lattice's
        # rotation period (30 deg for hex, 45 for square), e.g. grains within +-20 deg plus a few
        # degrees in-grain; beyond that a boundary between e.g. +29 and -29 deg (hex: 2 deg apart)
        # would pass through 0 deg.
        labels = {k: gaussian_filter(v, sigma=sp.boundary_px, mode="nearest") for k, v in labels.items()}
    return labels


def _smooth(sp: SpecimenConfig, shape: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Slowly varying fields (gradient, bump or sinusoid), a different direction/phase per component."""
    x, y = _scan_coords(shape)
    amps = {"exx": sp.strain_max, "eyy": sp.strain_max, "exy": sp.strain_max, "theta": sp.rotation_max_deg}
    labels: dict[str, np.ndarray] = {}
    base = rng.uniform(0.0, 2 * math.pi)
    for i, (key, amp) in enumerate(amps.items()):
        # Directions a quarter turn apart per component (plus a random common offset and jitter),
        # so the four maps differ in shape.
        phi = base + i * math.pi / 2 + rng.uniform(-0.3, 0.3)
        sign = 1.0 if i % 2 == 0 else -1.0
        if sp.field == "gradient":
            proj = x * math.cos(phi) + y * math.sin(phi)
            lo, hi = proj.min(), proj.max()
            f = 2.0 * (proj - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros_like(proj)
        elif sp.field == "bump":
            cx, cy = 0.5 + 0.2 * math.cos(phi), 0.5 + 0.2 * math.sin(phi)
            width = rng.uniform(0.15, 0.3)
            f = sign * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * width**2))
        else:
            kx, ky = math.cos(phi), math.sin(phi)
            f = np.sin(2 * math.pi * (kx * x + ky * y) + rng.uniform(0.0, 2 * math.pi))
        labels[key] = amp * f
    return labels


def _random(sp: SpecimenConfig, shape: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Independent uniform draws per position (training sets)."""
    return {
        "exx": rng.uniform(-sp.strain_max, sp.strain_max, size=shape),
        "eyy": rng.uniform(-sp.strain_max, sp.strain_max, size=shape),
        "exy": rng.uniform(-sp.strain_max, sp.strain_max, size=shape),
        "theta": rng.uniform(-sp.rotation_max_deg, sp.rotation_max_deg, size=shape),
    }


def specimen_labels(sim: SimulateConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Labels ``exx, eyy, exy`` (fractions) and ``theta`` (degrees), each (Rx, Ry) float64."""
    make = {"polycrystal": _polycrystal, "smooth": _smooth, "random": _random}[sim.specimen.kind]
    labels = make(sim.specimen, tuple(sim.scan), rng)
    return {k: np.ascontiguousarray(labels[k], dtype=np.float64) for k in LABEL_KEYS}


def _rows_per_block(cfg: Config) -> int:
    """Scan rows per yielded block: about 16 MB of float32 patterns, at least one row."""
    ry, q = cfg.simulate.scan[1], cfg.simulate.size
    return max(1, int(16e6 // (ry * q * q * 4)))


def simulate(
    cfg: Config,
    progress: Callable[[int], None] | None = None,
    rows_per_block: int | None = None,
) -> tuple[dict[str, np.ndarray], Iterator[tuple[slice, np.ndarray]]]:
    """Labels and a lazy iterator of ``(rows, block (n, Ry, Q, Q) float32)`` over the scan.

    Noise (``cfg.noise``) is applied per scan row with :func:`edgestem.data.noise.noise_rng`, and the
    disk intensity variation is drawn per row, so blocks do not depend on ``rows_per_block``.
    ``progress(n)`` is called with the number of scan rows just produced.
    """
    sim = cfg.simulate
    labels = specimen_labels(sim, specimen_rng(cfg.seed))
    F = strain.deformation_gradient(labels["exx"], labels["eyy"], labels["exy"], labels["theta"])
    step = rows_per_block or _rows_per_block(cfg)
    rx, ry = sim.scan
    q = sim.size
    noisy = noise_mod.is_active(cfg.noise)
    hot = noise_mod.hot_pixel_mask(q, cfg.noise.hot_pixels, cfg.seed) if cfg.noise.hot_pixels > 0 else None

    def blocks() -> Iterator[tuple[slice, np.ndarray]]:
        for r0 in range(0, rx, step):
            rows = range(r0, min(rx, r0 + step))
            modes = None
            if sim.lattice.intensity_variation > 0:
                modes = np.concatenate([_draw_modes(disk_rng(cfg.seed, r), ry, sim.lattice, q) for r in rows])
            block = _render(F[rows.start : rows.stop].reshape(-1, 2, 2), sim.lattice, q, modes)
            block = block.reshape(len(rows), ry, q, q)
            if noisy:
                for i, r in enumerate(rows):
                    block[i] = noise_mod.apply_noise(block[i], cfg.noise, noise_mod.noise_rng(cfg.seed, r), hot)
            if progress is not None:
                progress(len(rows))
            yield slice(rows.start, rows.stop), block

    return labels, blocks()


def units_attr(cfg: Config, clean: str) -> str:
    """The ``units`` attribute of a simulated file (JSON): data (after the config's noise), q, labels."""
    return json.dumps(
        {
            "data": noise_mod.noise_units(cfg.noise, clean) if noise_mod.is_active(cfg.noise) else clean,
            "q": "detector pixel (axis -2 = kx, axis -1 = ky, centre (Q-1)/2)",
            "exx": "fraction",
            "eyy": "fraction",
            "exy": "fraction",
            "theta": "degree",
        }
    )


def file_attrs(cfg: Config) -> dict[str, Any]:
    """Root attributes of a simulated file (config YAML, seed, noise, lattice, specimen, units)."""
    lat = cfg.simulate.lattice
    clean = "normalised intensity (sum 1 per pattern)"
    return {
        "config": dump_config(cfg),
        "seed": int(cfg.seed),
        "noise": json.dumps(cfg.noise.model_dump(mode="json")),
        "lattice": json.dumps(
            {
                "kind": lat.kind,
                "spacing_px": lat.spacing_px,
                "orientation_deg": lat.orientation_deg,
                "disk_radius_px": lat.disk_radius_px,
                "symmetry": symmetry_fold(lat),
            }
        ),
        "specimen": json.dumps(cfg.simulate.specimen.model_dump(mode="json")),
        "simulator": SIMULATOR,
        "units": units_attr(cfg, clean),
    }


def simulate_to_file(cfg: Config, out: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> Path:
    """Simulate ``cfg`` into an edgestem HDF5 file at ``out`` (atomic), streaming row blocks."""
    rx, ry = cfg.simulate.scan
    q = cfg.simulate.size
    labels, blocks = simulate(cfg, progress)
    with data_writer(out, (rx, ry, q, q), attrs=file_attrs(cfg)) as w:
        for rows, block in blocks:
            w.write(rows, block)
        w.set_labels(labels)
    return Path(out)
