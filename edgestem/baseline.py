"""Classical Bragg-disk strain mapping, the peer method edgestem is compared with (docs/science.md).

What a careful microscopist does with py4DSTEM (probe template, disk detection by correlation,
lattice indexing and fitting, strain relative to a reference region), written with numpy/scipy only
and from the data alone: labels are never read, and a file's lattice attributes only hint the symmetry.

1. **Probe kernel**: the central (000) disk of the mean pattern (or a given vacuum probe), background
   subtracted and windowed, sharpened into a zero-sum kernel (disk minus a broader disk, like
   py4DSTEM's sigmoid-edge kernel) so that constant and linear backgrounds drop out of correlations
   (measured: without the negative ring the orientation search fails at w = 0.7).
2. **Origin**: hot pixels (brighter than all neighbours in most frames) are masked; the central beam
   of every pattern is measured by an iterated, background-subtracted centroid, and a smooth
   (quadratic) fit over the scan gives each pattern's origin (py4DSTEM's ``fit_origin``).
   ``origin="pattern"`` fits it per pattern instead, with the (000) disk as a lattice point.
3. **Reference lattice**: disks of the mean pattern and of block means of the scan are detected as
   local maxima of the FFT cross-correlation with the kernel; in each, the basis that indexes most
   disks is found and reduced; the median shape picks the basis ``B0 = [g1 g2]`` and (unless given)
   the symmetry; hex and square bases are made exactly symmetric.
4. **Per pattern**, in batches: the orientation by a coarse search over one symmetry period (the
   correlation image summed over the inner lattice points of ``R(phi) B0``), so grains of any
   rotation are indexed against ``B0``; round 1 measures the inner disks by centroids in re-centred
   windows after subtracting a plane fitted to an annulus, and fits the lattice; later rounds
   measure every disk at its predicted position (also disks cut by the detector's edge) by a
   template fit: Poisson maximum likelihood of ``a T(|k - s|) + plane`` (Fisher scoring), with the
   disk profile ``T`` (a soft edge averaged over a pixel) fitted to the data's own disks. The
   lattice follows by weighted least squares ``q_j - c = B' (h_j, k_j)`` (weights: inverse variances
   of the disk positions; outliers beyond 4 robust sigmas rejected), and ``A = B' inv(B0)``.
   ``refine="centroid"`` keeps the centroids throughout (fully visible disks only).
5. **Strain** through :func:`edgestem.strain.strain_from_affine`; positions whose fit fails (too few
   disks, a degenerate or absurd lattice) are NaN, counted in ``failed`` and kept out of the reference.

On the built-in simulator (64 px hex patterns, 1e5 counts) the template fit sits at about 1.0-1.1x
the Cramer-Rao bound of the exact pattern model down to 1e3 electrons per pattern, the centroids at
about 1.6x (they use only the disks wholly on the detector); at 1e2 electrons the per-disk fits
degrade to about 1.7x. The disk model family contains the simulator's disk exactly, so on noise-free
simulated data the error is below 0.001 %: real disks will leave a model-mismatch floor.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import fft as sfft
from scipy import ndimage, optimize

from edgestem import strain as S
from edgestem.data.io import Dataset4D, check_intensities
from edgestem.errors import DataError
from edgestem.lattice import reduce_basis

__all__ = ["BaselineResult", "classical_strain"]

# Patterns processed per vectorised batch (bounds the window arrays to about 100 MB at 64 px).
_BATCH = 512
# Number of block means of the scan searched for the reference lattice (besides the mean pattern).
_BLOCKS = 64
# Orientation search step, degrees.
_PHI_STEP = 1.0
# Inner lattice points (|g| up to this many shortest spacings) seed the orientation and the first fit.
_INNER = 2.1
# Strain beyond which a fitted lattice is rejected as absurd (singular values of A outside 1 -+ this).
_MAX_DEFORMATION = 0.2
# Gauss-Newton (Fisher scoring) steps of the per-disk template fit.
_GN_STEPS = 3
# Poisson weights 1 / model are floored at this fraction of the disk's amplitude.
_FLOOR = 0.01
# Template fits measure disks whose centre lies up to this far outside the detector (pixels).
_OUTSIDE = 1.5


@dataclass
class BaselineResult:
    """Output of :func:`classical_strain`.

    ``A``: per-position affine maps ``g' = A g`` (NaN where the fit failed); ``maps``: strain maps
    relative to the reference (``exx, eyy, exy`` fractions, ``theta`` degrees; NaN where failed);
    ``n_disks``: diffracted disks used in each fit; ``failed``: positions whose fit failed;
    ``patterns_per_second``: throughput of the whole call; ``lattice``: the reference basis
    ``[g1 g2]`` (columns, kx/ky pixels); ``symmetry``: the rotation fold used; ``disk_radius``:
    the disk radius of the fitted profile (px); ``origin``: the origin used per pattern (px).
    """

    A: np.ndarray
    maps: dict[str, np.ndarray]
    n_disks: np.ndarray
    failed: int
    patterns_per_second: float
    lattice: np.ndarray
    symmetry: int
    disk_radius: float
    origin: np.ndarray


# Sub-pixel bins of the window masks (per axis): the masks follow a window's centre to 1/16 px.
_BINS = 16


@dataclass
class _Geometry:
    """Windows of the centroid measurement, from the disk radius and the lattice spacing.

    A disk is measured inside a soft circular window (weight 1 to ``window - 0.5``, 0 from
    ``window + 0.5``) after subtracting a plane fitted to the annulus ``ann_in <= r <= ann_out``.
    ``s2``: the disk's second moment along one axis (px^2), for the centroid's variance model.
    """

    radius: float
    window: float
    ann_in: float
    ann_out: float
    s2: float
    _cache: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def make(cls, radius: float, spacing: float | None = None, s2: float | None = None) -> _Geometry:
        """Window to the disk edge plus 1 px, background annulus outside it, clear of the neighbours."""
        window = radius + 1.0
        ann_in = window + 0.5
        ann_out = ann_in + 2.0
        if spacing is not None:
            ann_out = max(ann_in + 1.0, min(ann_out, spacing - radius - 1.5))
        return cls(radius, window, ann_in, ann_out, radius**2 / 4 if s2 is None else s2)

    @property
    def half(self) -> int:
        """Half width of the square window arrays (a window's centre is within 1/2 px of its pixel)."""
        return int(math.ceil(self.ann_out + 0.5))

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """Per sub-pixel bin, the pixel features (bins, P, 12) and window weights squared (bins, P).

        Features: annulus mask a times (1, ox, oy, ox^2, oy^2, ox oy), then the window weight times
        the same, with ``o`` the pixel offsets from the window's integer centre.
        """
        if self._cache is not None:
            return self._cache
        h = self.half
        o = np.arange(-h, h + 1, dtype=np.float64)
        ox, oy = np.meshgrid(o, o, indexing="ij")
        ox, oy = ox.ravel(), oy.ravel()
        f = np.arange(-_BINS // 2, _BINS // 2 + 1) / _BINS
        fx, fy = np.meshgrid(f, f, indexing="ij")
        r = np.hypot(ox[None] - fx.ravel()[:, None], oy[None] - fy.ravel()[:, None])  # (bins, P)
        ann = ((r >= self.ann_in) & (r <= self.ann_out)).astype(np.float64)
        win = np.clip(self.window + 0.5 - r, 0.0, 1.0)
        mono = np.stack([np.ones_like(ox), ox, oy, ox * ox, oy * oy, ox * oy], -1)  # (P, 6)
        feats = np.concatenate([ann[..., None] * mono, win[..., None] * mono], -1)
        self._cache = (feats, win**2)
        return self._cache


# ----------------------------------------------------------------------------------------------
# data access


class _Source:
    """Row chunks of a Dataset4D or an in-memory/memory-mapped (Rx, Ry, Qx, Qy) array, validated."""

    def __init__(self, data: Dataset4D | np.ndarray) -> None:
        if isinstance(data, Dataset4D):
            self.ds: Dataset4D | None = data
            self.array = None
            self.shape = tuple(data.shape)
            self.attrs = dict(data.attrs)
        else:
            if not hasattr(data, "shape") or not hasattr(data, "dtype"):
                data = np.asarray(data)
            if len(data.shape) != 4:
                raise DataError(f"data has shape {tuple(data.shape)}; expected 4D (Rx, Ry, Qx, Qy)")
            if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
                raise DataError(f"data dtype {data.dtype} is not a real number type")
            self.ds = None
            self.array = data
            self.shape = tuple(int(n) for n in data.shape)
            self.attrs = {}
        if min(self.shape) < 1:
            raise DataError(f"data has an empty axis (shape {self.shape})")

    def rows(self, rows_per_chunk: int) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, float32 block (n, Ry, Qx, Qy))``; NaN/inf or negatives raise DataError."""
        if self.ds is not None:
            for sl, block in self.ds.iter_rows(rows_per_chunk, validate=True):
                yield sl, np.asarray(block, dtype=np.float32)
            return
        for r0 in range(0, self.shape[0], rows_per_chunk):
            sl = slice(r0, min(self.shape[0], r0 + rows_per_chunk))
            block = np.asarray(self.array[sl])
            check_intensities(block, "data", offset=r0)
            yield sl, block.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# probe template and correlation


def _radial_profile(img: np.ndarray, c: np.ndarray, r_max: float, step: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``img`` in rings of width ``step`` around ``c`` up to ``r_max``: (radii, values)."""
    i, j = np.indices(img.shape)
    r = np.hypot(i - c[0], j - c[1])
    sel = r < r_max
    b = (r[sel] / step).astype(int)
    n = np.bincount(b, minlength=int(r_max / step) + 1)
    s = np.bincount(b, weights=img[sel], minlength=n.size)
    ok = n > 0
    return (np.arange(n.size)[ok] + 0.5) * step, s[ok] / n[ok]


def _central_beam(mean: np.ndarray) -> tuple[np.ndarray, float]:
    """Position and radius (half-maximum edge of the radial profile) of the brightest disk of ``mean``."""
    sm = ndimage.gaussian_filter(mean.astype(np.float64), 1.5)
    c = np.array(np.unravel_index(np.argmax(sm), sm.shape), dtype=float)
    r_max = min(mean.shape) / 4.0
    radius = 2.0
    for _ in range(3):
        r, prof = _radial_profile(mean, c, r_max)
        floor = np.min(prof)
        half = floor + 0.5 * (prof[0] - floor)
        below = np.nonzero(prof < half)[0]
        radius = float(r[below[0]]) if below.size else r_max / 2
        radius = min(max(radius, 1.0), r_max / 2)
        geo = _Geometry.make(radius)
        pos, *_ = _refine(mean[None].astype(np.float64), np.zeros(1, int), c[None], geo, 6)
        if np.all(np.isfinite(pos)):
            c = pos[0]
    return c, radius


def _soft_disk(shape: tuple[int, int], c: np.ndarray, radius: float, edge: float = 0.5) -> np.ndarray:
    """A disk of radius ``radius`` centred at ``c`` with a linear edge of ``2 edge`` px, peak 1."""
    i, j = np.indices(shape)
    r = np.hypot(i - c[0], j - c[1])
    return np.clip((radius + edge - r) / (2 * edge), 0.0, 1.0)


def _probe_kernel(
    image: np.ndarray, shape: tuple[int, int], centre: np.ndarray | None = None, radius: float | None = None
) -> tuple[np.ndarray, float, float]:
    """Zero-sum correlation kernel of pattern shape, centred at pixel (0, 0), from a probe image.

    ``image``: the mean pattern (its central disk is used) or a vacuum probe. The disk is cut out
    with a soft window, its background (a plane fitted to an annulus) removed, normalised to sum 1;
    a broader soft disk of the same sum is subtracted (the kernel's negative ring). Returns the
    kernel, the disk radius (half maximum) and the disk's second moment along one axis (px^2).
    """
    image = np.asarray(image, dtype=np.float64)
    if centre is None or radius is None:
        c0, r0 = _central_beam(image)
        centre = c0 if centre is None else centre
        radius = r0 if radius is None else radius
    centre = np.asarray(centre, dtype=float)
    geo = _Geometry.make(radius)
    h = geo.half
    ic = np.rint(centre).astype(np.int64)
    w, inside = _windows(image[None], np.zeros(1, np.int64), ic[None], h)
    o = np.arange(-h, h + 1, dtype=float)
    dx, dy = np.meshgrid(o - (centre[0] - ic[0]), o - (centre[1] - ic[1]), indexing="ij")
    r = np.hypot(dx, dy).ravel()
    ann = (r >= geo.ann_in) & (r <= geo.ann_out) & inside[0]
    design = np.stack([np.ones_like(r), dx.ravel(), dy.ravel()], -1)
    coef, *_ = np.linalg.lstsq(design[ann], w[0][ann], rcond=None)
    win = np.clip(geo.window + 0.5 - r, 0.0, 1.0) * inside[0]
    t = np.clip((w[0] - design @ coef) * win, 0.0, None).reshape(2 * h + 1, 2 * h + 1)
    if t.sum() <= 0:
        raise DataError("no central beam found in the mean pattern; pass a vacuum probe (probe=...)")
    t /= t.sum()
    s2 = float(0.5 * (t * (dx**2 + dy**2)).sum())
    # Centre the template on the sub-pixel position by a Fourier shift, then place it at (0, 0).
    kernel = np.zeros(shape)
    idx = np.arange(-h, h + 1)
    kernel[np.ix_(idx % shape[0], idx % shape[1])] = t
    kernel = _fourier_shift(kernel, -(centre - ic))
    ring = np.fft.ifftshift(_soft_disk(shape, np.array(shape, float) // 2, radius + 2.0, 1.0))
    kernel = kernel - ring * (kernel.sum() / ring.sum())
    return kernel, float(radius), s2


def _fourier_shift(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``img`` shifted by ``shift`` pixels (periodic, sub-pixel) through the Fourier transform."""
    fx = np.fft.fftfreq(img.shape[0])[:, None]
    fy = np.fft.fftfreq(img.shape[1])[None, :]
    ph = np.exp(-2j * np.pi * (fx * shift[0] + fy * shift[1]))
    return np.fft.ifft2(np.fft.fft2(img) * ph).real


def _correlate(pats: np.ndarray, kernel_ft: np.ndarray, workers: int) -> np.ndarray:
    """Cross-correlation of patterns (N, Qx, Qy) with the kernel: peaks sit at the disk centres."""
    f = sfft.rfft2(np.nan_to_num(pats), axes=(-2, -1), workers=workers)
    f *= kernel_ft
    return sfft.irfft2(f, s=pats.shape[-2:], axes=(-2, -1), workers=workers)


# ----------------------------------------------------------------------------------------------
# windowed centroids


def _windows(pats: np.ndarray, pidx: np.ndarray, ic: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Square windows (M, S*S) of patterns ``pidx`` around integer centres ``ic`` (M, 2); on-detector mask."""
    qx, qy = pats.shape[-2:]
    o = np.arange(-h, h + 1)
    ix = ic[:, 0, None] + o
    iy = ic[:, 1, None] + o
    flat = pats.reshape(pats.shape[0], -1)
    lin = np.clip(ix, 0, qx - 1)[:, :, None] * qy + np.clip(iy, 0, qy - 1)[:, None, :]
    m = ic.shape[0]
    w = flat[pidx[:, None], lin.reshape(m, o.size**2)].astype(np.float64)
    inside = (((ix >= 0) & (ix < qx))[:, :, None] & ((iy >= 0) & (iy < qy))[:, None, :]).reshape(m, o.size**2)
    return _masked(w, inside)


def _masked(w: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked detector pixels (NaN, e.g. hot pixels) count as off the detector."""
    bad = np.isnan(w)
    if bad.any():
        inside = inside & ~bad
        w = np.where(bad, 0.0, w)
    return w, inside


def _moments(w: np.ndarray, inside: np.ndarray, bins: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of data (M, 12) and of the on-detector mask (M, 12) against each window's bin features."""
    data = np.empty((w.shape[0], feats.shape[-1]))
    mask = np.empty_like(data)
    wi = w * inside
    order = np.argsort(bins, kind="stable")
    edges = np.searchsorted(bins[order], np.arange(feats.shape[0] + 1))
    for b in range(feats.shape[0]):
        sel = order[edges[b] : edges[b + 1]]
        if sel.size:
            data[sel] = wi[sel] @ feats[b]
            mask[sel] = inside[sel] @ feats[b]
    return data, mask


def _refine(
    pats: np.ndarray, pidx: np.ndarray, p: np.ndarray, geo: _Geometry, n_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Iterated windowed centroids after local plane-background subtraction.

    Each round measures the centroid in a soft window centred on the current estimate and moves
    the window there. Returns positions (M, 2) (NaN where the window holds no signal), integrated
    intensities (M,), centroid variances along x and y (M, 2) (Poisson model, in units of the data's
    gain: ``(N s2 + b K2) / N^2`` with background level ``b``) and a validity mask.
    """
    feats, win2 = geo.features()
    p = np.array(p, dtype=np.float64).reshape(-1, 2)
    m = p.shape[0]
    ok = np.isfinite(p).all(1)
    p[~ok] = 0.0
    n_int = np.zeros(m)
    bg0 = np.zeros(m)
    for _ in range(n_iter + 1):
        ic = np.rint(p)
        f = p - ic
        fb = np.clip(np.rint(f * _BINS).astype(np.int64) + _BINS // 2, 0, _BINS)
        bins = fb[:, 0] * (_BINS + 1) + fb[:, 1]
        w, inside = _windows(pats, pidx, ic.astype(np.int64), geo.half)
        data, mask = _moments(w, inside, bins, feats)
        # Plane c0 + c1 ox + c2 oy on the annulus: normal equations from the mask sums.
        s0, sx, sy, sxx, syy, sxy = mask[:, :6].T
        nm = np.stack([np.stack([s0, sx, sy], -1), np.stack([sx, sxx, sxy], -1), np.stack([sy, sxy, syy], -1)], -2)
        coef = np.linalg.solve(nm + np.eye(3) * 1e-9, data[:, :3, None])[..., 0]
        w0, wx, wy, wxx, wyy, wxy = mask[:, 6:].T
        n_int = data[:, 6] - (coef[:, 0] * w0 + coef[:, 1] * wx + coef[:, 2] * wy)
        sx_ = data[:, 7] - (coef[:, 0] * wx + coef[:, 1] * wxx + coef[:, 2] * wxy)
        sy_ = data[:, 8] - (coef[:, 0] * wy + coef[:, 1] * wxy + coef[:, 2] * wyy)
        good = n_int > 0
        ok &= good
        safe = np.where(good, n_int, 1.0)
        step = np.clip(np.stack([sx_, sy_], -1) / safe[:, None] - f, -1.5, 1.5)
        p += np.where(good[:, None], step, 0.0)
        bg0 = coef[:, 0] + coef[:, 1] * f[:, 0] + coef[:, 2] * f[:, 1]
    # Variance of the centroid per axis: disk photons (second moment s2) plus background photons.
    centre_bin = (_BINS // 2) * (_BINS + 1) + _BINS // 2
    k2 = (win2[centre_bin] * np.arange(-geo.half, geo.half + 1).repeat(2 * geo.half + 1) ** 2).sum()
    safe = np.where(ok, n_int, 1.0)
    v = (geo.s2 * safe + np.maximum(bg0, 0.0) * k2) / safe**2
    var = np.where(ok, v, np.inf)[:, None].repeat(2, 1)
    p[~ok] = np.nan
    return p, np.where(ok, n_int, 0.0), var, ok


# ----------------------------------------------------------------------------------------------
# disk profile and template fit


@dataclass
class _Profile:
    """Radial profile of a Bragg disk, fitted to the data's own disks: a soft edge
    ``0.5 (1 - tanh((r - radius) / edge))`` averaged over one detector pixel along r."""

    radius: float
    edge: float

    def __call__(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Profile and its derivative along r."""
        u = (r - self.radius) / self.edge
        h = 0.5 / self.edge
        return 0.5 - 0.5 * self.edge * (_logcosh(u + h) - _logcosh(u - h)), -0.5 * (np.tanh(u + h) - np.tanh(u - h))


def _logcosh(x: np.ndarray) -> np.ndarray:
    """``log(cosh(x))`` without overflow."""
    x = np.abs(x)
    return x + np.log1p(np.exp(-2.0 * x)) - math.log(2.0)


def _offsets(h: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel offsets (P,) along x and y of a flattened (2h+1)^2 window."""
    o = np.arange(-h, h + 1, dtype=np.float64)
    return o.repeat(2 * h + 1), np.tile(o, 2 * h + 1)


def _estimate_profile(pats: np.ndarray, pidx: np.ndarray, q: np.ndarray, geo: _Geometry) -> _Profile:
    """Fit the soft-disk profile to the pooled radial profile of measured disks (background removed)."""
    h = geo.half
    ox, oy = _offsets(h)
    ic = np.rint(q)
    w, inside = _windows(pats, pidx, ic.astype(np.int64), h)
    dx, dy = ox - (q - ic)[:, :1], oy - (q - ic)[:, 1:]
    r = np.sqrt(dx * dx + dy * dy)
    ann = ((r >= geo.ann_in) & (r <= geo.ann_out) & inside).astype(np.float64)
    x = np.stack([np.ones_like(dx), dx, dy], -1)
    coef = np.linalg.solve(
        np.einsum("mpi,mpj->mij", x * ann[..., None], x) + 1e-9 * np.eye(3),
        np.einsum("mpi,mp->mi", x * ann[..., None], w)[..., None],
    )[..., 0]
    sub = (w - np.einsum("mpi,mi->mp", x, coef)) * inside
    n = (sub * (r <= geo.window + 0.5)).sum(1)
    keep = n > 0
    if keep.sum() < 3:
        return _Profile(geo.radius, 0.5)
    # Pool the pixels within the fit radius in 0.05 px rings: intensity relative to the disk's total.
    pix = (r[keep] <= geo.ann_out) & inside[keep]
    b = (r[keep][pix] / 0.05).astype(np.int64)
    wgt = np.broadcast_to(n[keep, None], pix.shape)[pix]
    cnt = np.bincount(b, weights=wgt)
    sel = cnt > 0
    rb = np.bincount(b, weights=wgt * r[keep][pix])[sel] / cnt[sel]
    yb = np.bincount(b, weights=sub[keep][pix])[sel] / cnt[sel]
    wb = cnt[sel]
    sw = np.sqrt(wb)

    def misfit(x: np.ndarray) -> float:
        if x[0] <= 0 or x[1] <= 0.01:
            return np.inf
        d = np.stack([_Profile(float(x[0]), float(x[1]))(rb)[0], np.ones_like(rb)], 1)
        sol, *_ = np.linalg.lstsq(d * sw[:, None], yb * sw, rcond=None)
        return float((wb * (yb - d @ sol) ** 2).sum()) if sol[0] > 0 else np.inf

    grid = [(r0, e0) for r0 in np.linspace(0.5, 1.5, 26) * geo.radius for e0 in (0.1, 0.25, 0.5, 1.0)]
    start = min(grid, key=lambda x: misfit(np.array(x)))
    fit = optimize.minimize(misfit, np.array(start), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-12})
    x = fit.x if np.isfinite(fit.fun) else np.array(start)
    return _Profile(float(x[0]), float(x[1]))


def _solve(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Batched ``solve(m, v)`` with a tiny relative ridge; singular systems give NaN, not an error."""
    return (_inv(m) @ v[..., None])[..., 0]


def _inv(m: np.ndarray) -> np.ndarray:
    """Batched inverse of symmetric positive (semi-)definite matrices, equilibrated by their diagonal;
    singular or non-finite ones give NaN."""
    d = np.sqrt(np.abs(np.diagonal(m, axis1=-2, axis2=-1)))
    d = np.where(d > 0, d, 1.0)
    mn = m / (d[..., :, None] * d[..., None, :])
    good = np.isfinite(mn).all((-2, -1))
    good[good] = np.linalg.det(mn[good]) > 1e-12
    out = np.full_like(m, np.nan)
    if good.any():
        out[good] = np.linalg.inv(mn[good]) / (d[good][..., :, None] * d[good][..., None, :])
    return out


def _template_fit(
    pats: np.ndarray,
    pidx: np.ndarray,
    p: np.ndarray,
    geo: _Geometry,
    prof: _Profile,
    n_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel disk positions: Poisson maximum likelihood of ``a T(|k - s|) + plane`` per disk.

    Fisher scoring (Gauss-Newton with weights ``1 / model``) over the pixels within ``geo.ann_out``
    of the disk that are on the detector, so disks cut by the detector edge are measured too.
    Returns positions (M, 2) (NaN where the fit fails), their variances (M, 2) (inverse Fisher
    information, up to the data's gain) and a validity mask.
    """
    reach = geo.ann_out + 0.75
    hh = int(math.ceil(reach))
    ox, oy = _offsets(hh)
    disk = np.hypot(ox, oy) <= reach
    ox, oy = ox[disk], oy[disk]
    qx, qy = pats.shape[-2:]
    flat = pats.reshape(pats.shape[0], -1)
    p0 = np.array(p, dtype=np.float64)
    out = np.full_like(p0, np.nan)
    var = np.full_like(p0, np.inf)
    for start in range(0, p0.shape[0], 2048):
        sl = slice(start, start + 2048)
        ps = np.nan_to_num(p0[sl]).copy()
        start_pos = ps.copy()
        bad = ~np.isfinite(p0[sl]).all(1)
        m = ps.shape[0]
        jac = np.empty((m, ox.size, 6))
        par = None
        hess = None
        for it in range(n_iter + 1):
            ic = np.rint(ps).astype(np.int64)
            ix, iy = ic[:, :1] + ox.astype(np.int64), ic[:, 1:] + oy.astype(np.int64)
            inside = (ix >= 0) & (ix < qx) & (iy >= 0) & (iy < qy)
            w = flat[pidx[sl, None], np.clip(ix, 0, qx - 1) * qy + np.clip(iy, 0, qy - 1)].astype(np.float64)
            w, inside = _masked(w, inside)
            dx, dy = ix - ps[:, :1], iy - ps[:, 1:]
            # The plane is written in coordinates fixed to the window's start, so the shift moves the disk only.
            jac[..., 3] = 1.0
            jac[..., 4] = ix - start_pos[:, :1]
            jac[..., 5] = iy - start_pos[:, 1:]
            r = np.sqrt(dx * dx + dy * dy)
            fm = (r <= geo.ann_out) & inside
            t, dt = prof(r)
            jac[..., 2] = t
            if par is None:
                xm = jac[..., 2:] * fm[..., None]
                par = _solve(np.matmul(xm.transpose(0, 2, 1), jac[..., 2:]), np.einsum("mpi,mp->mi", xm, w))
                bad |= ~np.isfinite(par).all(1)
                par = np.nan_to_num(par)
            amp = par[:, :1]
            model = np.einsum("mpi,mi->mp", jac[..., 2:], par)
            g = -amp * dt / np.where(r > 1e-9, r, 1.0)
            jac[..., 0] = g * dx
            jac[..., 1] = g * dy
            # Fisher scoring of the Poisson likelihood: weights 1 / model (floored).
            wts = fm / np.maximum(model, _FLOOR * np.maximum(amp, 0.0) + 1e-30)
            jm = jac * wts[..., None]
            hess = np.matmul(jm.transpose(0, 2, 1), jac)
            if it == n_iter:
                break
            step = _solve(hess, np.einsum("mpi,mp->mi", jm, w - model))
            bad |= ~np.isfinite(step).all(1)
            step = np.nan_to_num(step)
            ps += np.clip(step[:, :2], -1.0, 1.0)
            par = par + step[:, 2:]
        cov = _inv(hess)
        v = np.stack([cov[:, 0, 0], cov[:, 1, 1]], -1)
        good = ~bad & (par[:, 0] > 0) & (np.hypot(*(ps - p0[sl]).T) < 1.5) & np.isfinite(v).all(1) & (v > 0).all(1)
        out[sl] = np.where(good[:, None], ps, np.nan)
        var[sl] = np.where(good[:, None], v, np.inf)
    ok = np.isfinite(out).all(1)
    return out, var, ok


# ----------------------------------------------------------------------------------------------
# reference lattice


def _peaks(corr: np.ndarray, centre: np.ndarray, radius: float, n_max: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of one correlation image (sub-pixel by parabolas), strongest first, 000 excluded."""
    size = max(3, 2 * int(radius) + 1)
    mx = ndimage.maximum_filter(corr, size=size, mode="nearest")
    qx, qy = corr.shape
    m = int(math.ceil(radius)) + 1
    peak = (corr == mx) & (corr > 0)
    peak[:m] = peak[-m:] = False
    peak[:, :m] = peak[:, -m:] = False
    ij = np.argwhere(peak)
    val = corr[ij[:, 0], ij[:, 1]]
    far = np.hypot(ij[:, 0] - centre[0], ij[:, 1] - centre[1]) > 2 * radius
    ij, val = ij[far], val[far]
    order = np.argsort(-val)[:n_max]
    ij, val = ij[order], val[order]
    pos = ij.astype(float)
    for ax in (0, 1):
        e = np.zeros(2, int)
        e[ax] = 1
        lo = corr[ij[:, 0] - e[0], ij[:, 1] - e[1]]
        hi = corr[ij[:, 0] + e[0], ij[:, 1] + e[1]]
        den = lo - 2 * val + hi
        pos[:, ax] += np.where(den < 0, 0.5 * (lo - hi) / np.where(den < 0, den, -1.0), 0.0)
    return pos - centre, val


def _reduce(b: np.ndarray) -> np.ndarray:
    """Reduced basis (columns) with ``g1 . g2 >= 0`` and a right-handed pair (see edgestem.lattice)."""
    g1, g2 = reduce_basis(b[:, 0], b[:, 1])
    if g1 @ g2 < 0:
        g2 = -g2
    if g1[0] * g2[1] - g1[1] * g2[0] < 0:
        g1, g2 = g2, g1
    return np.stack([g1, g2], 1)


def _basis_from_peaks(v: np.ndarray, val: np.ndarray, radius: float) -> tuple[np.ndarray | None, float]:
    """The basis (reduced, columns) that indexes most of the peak vectors ``v``, and its support."""
    if v.shape[0] < 3:
        return None, 0.0
    wt = val / val.max()
    order = np.argsort(np.hypot(v[:, 0], v[:, 1]))
    cand = v[order[:12]]
    best, support = None, 0.0
    for i in range(len(cand)):
        for j in range(i + 1, len(cand)):
            b = np.stack([cand[i], cand[j]], 1)
            det = b[0, 0] * b[1, 1] - b[0, 1] * b[1, 0]
            if abs(det) < 0.3 * np.linalg.norm(cand[i]) * np.linalg.norm(cand[j]) or abs(det) < (2 * radius) ** 2:
                continue
            f = v @ np.linalg.inv(b).T
            n = np.rint(f)
            err = np.hypot(*(v - n @ b.T).T)
            hit = (err < np.maximum(1.0, 0.04 * np.hypot(v[:, 0], v[:, 1]))) & np.all(np.abs(n) <= 6, axis=1)
            s = float(wt[hit].sum()) - 1e-6 * abs(det)
            if s > support:
                best, support = b, s
    if best is None:
        return None, 0.0
    best = _reduce(best)
    # Least-squares refinement on the indexed peaks.
    f = v @ np.linalg.inv(best).T
    n = np.rint(f)
    hit = np.all(np.abs(f - n) < 0.15, axis=1)
    if hit.sum() >= 3:
        sol, *_ = np.linalg.lstsq(n[hit] * wt[hit, None], v[hit] * wt[hit, None], rcond=None)
        best = _reduce(sol.T)
    return best, support


def _shape(b: np.ndarray) -> np.ndarray:
    """Rotation- and handedness-free shape of a reduced basis: (|g1|, |g2|, |cos angle|)."""
    a, c = np.linalg.norm(b[:, 0]), np.linalg.norm(b[:, 1])
    return np.array([min(a, c), max(a, c), abs(b[:, 0] @ b[:, 1]) / (a * c)])


def _find_lattice(
    candidates: np.ndarray, centres: np.ndarray, kernel_ft: np.ndarray, radius: float, symmetry: int | None
) -> tuple[np.ndarray, int]:
    """Reference basis ``[g1 g2]`` (columns) and symmetry fold from candidate patterns (n, Qx, Qy).

    Each candidate (the mean pattern, block means) gives the basis indexing most of its detected
    disks; the median shape picks the candidate whose basis is used, the symmetry (if not given) is
    inferred from that shape, and hex/square bases are made exactly symmetric.
    """
    corr = _correlate(candidates.astype(np.float64), kernel_ft, 1)
    bases, shapes, supports = [], [], []
    for k in range(corr.shape[0]):
        v, val = _peaks(corr[k], centres[k], radius)
        b, s = _basis_from_peaks(v, val, radius)
        if b is not None:
            bases.append(b)
            shapes.append(_shape(b))
            supports.append(s)
    if not bases:
        raise DataError("no Bragg-disk lattice found in the data (fewer than 3 disks detected in every mean pattern)")
    shapes_a = np.array(shapes)
    good = np.array(supports) >= 0.5 * np.median(supports)
    med = np.median(shapes_a[good], axis=0)
    dist = np.abs(shapes_a[:, :2] / med[:2] - 1).sum(1) + np.abs(shapes_a[:, 2] - med[2]) + (~good) * 10
    b0 = bases[int(np.argmin(dist))]
    length = 0.5 * (med[0] + med[1])
    angle = math.degrees(math.acos(min(med[2], 1.0)))
    if symmetry is None:
        equal = abs(med[1] / med[0] - 1) < 0.03
        if equal and abs(angle - 60) < 3:
            symmetry = 6
        elif equal and abs(angle - 90) < 3:
            symmetry = 4
        else:
            symmetry = 2
    if symmetry in (4, 6):
        g1 = b0[:, 0] / np.linalg.norm(b0[:, 0]) * length
        b0 = np.stack([g1, S.rotation_matrix(360.0 / symmetry) @ g1], 1)
    return b0, int(symmetry)


# ----------------------------------------------------------------------------------------------
# per-pattern orientation and lattice fit


def _sample(img: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bilinear samples of images (N, Qx, Qy) at positions (N, L, 2); zero outside."""
    n, qx, qy = img.shape
    x, y = pos[..., 0], pos[..., 1]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    flat = img.reshape(n, -1)
    rows = np.arange(n)[:, None]
    out = np.zeros(x.shape)
    for ddx, ddy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + ddx, y0 + ddy
        ok = (xi >= 0) & (xi < qx) & (yi >= 0) & (yi < qy)
        val = flat[rows, np.clip(xi, 0, qx - 1) * qy + np.clip(yi, 0, qy - 1)]
        out += np.where(ok, val * wgt, 0.0)
    return out


def _orientation(corr: np.ndarray, origin: np.ndarray, inner: np.ndarray, period: float) -> np.ndarray:
    """Rotation (degrees, within one symmetry period) of the reference lattice that best fits each pattern."""
    phis = np.arange(-period / 2, period / 2, _PHI_STEP)
    g = np.einsum("aij,lj->ali", S.rotation_matrix(phis), inner).reshape(-1, 2)
    pos = origin[:, None, :] + g[None]
    score = _sample(corr, pos).reshape(corr.shape[0], len(phis), inner.shape[0]).sum(-1)
    k = np.argmax(score, axis=1)
    lo = score[np.arange(len(k)), (k - 1) % len(phis)]
    hi = score[np.arange(len(k)), (k + 1) % len(phis)]
    mid = score[np.arange(len(k)), k]
    den = lo - 2 * mid + hi
    frac = np.where(den < 0, 0.5 * (lo - hi) / np.where(den < 0, den, -1.0), 0.0)
    return phis[k] + _PHI_STEP * frac


def _fit_lattice(
    q: np.ndarray, nvec: np.ndarray, origin: np.ndarray | None, wt: np.ndarray, use: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares ``q = c + B (h, k)`` per pattern, x and y rows separately.

    ``origin`` (N, 2) fixes ``c``; None fits it too. Returns ``B`` (N, 2, 2), ``c`` (N, 2) and the
    smallest normalised eigenvalue-like conditioning of the normal equations (N,).
    """
    n = q.shape[0]
    design = nvec if origin is not None else np.concatenate([np.ones((nvec.shape[0], 1)), nvec], 1)
    d = np.where(use[..., None], q - (origin[:, None, :] if origin is not None else 0.0), 0.0)
    w = np.where(use[..., None], wt, 0.0)
    outer = design[:, :, None] * design[:, None, :]  # (K, m, m)
    b = np.empty((n, 2, 2))
    c = np.zeros((n, 2)) if origin is None else origin.copy()
    cond = np.empty((n, 2))
    for ax in range(2):
        g = np.einsum("nk,kij->nij", w[..., ax], outer)
        rhs = np.einsum("nk,ki->ni", w[..., ax] * d[..., ax], design)
        diag = np.sqrt(np.maximum(np.diagonal(g, axis1=1, axis2=2), 1e-300))
        gn = g / (diag[:, :, None] * diag[:, None, :])
        cond[:, ax] = np.linalg.det(gn)
        sol = _solve(g, rhs)
        if origin is None:
            c[:, ax] = sol[:, 0]
        b[:, ax, :] = sol[:, -2:]
    return b, c, cond.min(axis=1)


def _fit_batch(
    pats: np.ndarray,
    corr: np.ndarray,
    origin: np.ndarray,
    b0: np.ndarray,
    period: float,
    geo: _Geometry,
    iterations: int,
    min_disks: int,
    prof: _Profile | None,
    free_origin: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit a batch of patterns (N, Qx, Qy) given their correlation images and origins (N, 2).

    Returns affine maps (N, 2, 2) (NaN where failed), diffracted disks used (N,), origins (N, 2)
    (fitted with ``free_origin``), the lattice-predicted disk positions (N, K, 2) and which disks
    the fit used (N, K).
    """
    n, qx, qy = pats.shape
    spacing = float(min(np.linalg.norm(b0, axis=0)))
    reach = 0.5 * math.hypot(qx, qy) * 1.3 + geo.ann_out
    m = int(math.ceil(reach / (spacing * 0.5))) + 1
    grid = np.stack(np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij"), -1).reshape(-1, 2)
    glen = np.linalg.norm(grid @ b0.T, axis=1)
    keep = (glen > 0) & (glen <= reach)
    nvec = grid[keep].astype(np.float64)
    inner_sel = glen[keep] <= _INNER * spacing + 1e-9
    phi = _orientation(corr, origin, nvec[inner_sel] @ b0.T, period)
    b = S.rotation_matrix(phi) @ b0
    if free_origin:
        # The (000) disk joins the fit as the lattice point (0, 0) and the origin is fitted.
        nvec = np.concatenate([np.zeros((1, 2)), nvec])
        inner_sel = np.concatenate([[True], inner_sel])
    c = origin.copy()
    pidx = np.broadcast_to(np.arange(n)[:, None], (n, nvec.shape[0]))
    used = np.zeros((n, nvec.shape[0]), dtype=bool)
    cond = np.zeros(n)

    def on_detector(pos: np.ndarray, margin: float) -> np.ndarray:
        return np.all((pos >= margin) & (pos <= np.array([qx, qy]) - 1 - margin), axis=-1)

    fitted = np.zeros((n, nvec.shape[0]), dtype=bool)  # template fits kept from the previous round
    q = np.full((n, nvec.shape[0], 2), np.nan)
    wt = np.zeros((n, nvec.shape[0], 2))
    for it in range(iterations):
        pred = c[:, None, :] + np.einsum("nij,kj->nki", b, nvec)
        if it == 0 or prof is None:
            # Centroids in re-centred windows, on disks wholly on the detector (the inner ones first).
            q[:] = np.nan
            wt[:] = 0.0
            sel = on_detector(pred, geo.ann_in) & (inner_sel[None, :] if it == 0 else True)
            pos, _, var, ok = _refine(pats, pidx[sel], pred[sel], geo, 3)
        else:
            # Template fits from the predicted positions, also on disks cut by the detector's edge. A
            # disk fitted and used in the previous round keeps its fit (it does not depend on the start).
            sel = on_detector(pred, -_OUTSIDE)
            q[~sel] = np.nan
            wt[~sel] = 0.0
            sel &= ~fitted
            pos, var, ok = _template_fit(pats, pidx[sel], pred[sel], geo, prof, _GN_STEPS)
        q[sel] = pos
        wt[sel] = np.where(ok[:, None], 1.0 / np.maximum(var, 1e-12), 0.0)
        sel = np.isfinite(q).all(-1)
        use = sel & (wt > 0).all(-1)
        # The window must not have wandered off its disk: stay within 1.5 px of the prediction.
        use &= np.where(use, np.hypot(*(np.nan_to_num(q) - pred).transpose(2, 0, 1)), 0) < 1.5 + 0.05 * it
        fixed = None if free_origin else origin
        b_new, c_new, cond = _fit_lattice(np.nan_to_num(q), nvec, fixed, wt, use)
        # Outliers: residuals beyond 4 robust sigmas (and beyond 0.2 px), then refit.
        res = np.nan_to_num(q) - c_new[:, None, :] - np.einsum("nij,kj->nki", b_new, nvec)
        z2 = np.where(use, (res**2 * wt).sum(-1), np.inf)
        k = np.maximum(use.sum(1) - 1, 0) // 2
        scale = np.sort(z2, axis=1)[np.arange(n), k] / 1.386  # median over the disks used
        bad = use & (z2 > 16.0 * np.maximum(scale, 1e-300)[:, None]) & (np.hypot(res[..., 0], res[..., 1]) > 0.2)
        use &= ~bad
        b, c, cond = _fit_lattice(np.nan_to_num(q), nvec, fixed, wt, use)
        used = use
        fitted = use if (it > 0 and prof is not None) else fitted
    a = b @ np.linalg.inv(b0)
    n_used = used[:, 1:].sum(1) if free_origin else used.sum(1)
    sv = np.linalg.svd(np.nan_to_num(a), compute_uv=False)
    fail = (
        (n_used < min_disks)
        | (cond < 1e-6)
        | ~np.isfinite(a).all((1, 2))
        | (sv.max(1) > 1 + _MAX_DEFORMATION)
        | (sv.min(1) < 1 - _MAX_DEFORMATION)
        | (np.linalg.det(np.nan_to_num(a)) <= 0)
    )
    a[fail] = np.nan
    return a, np.where(fail, 0, n_used), c, c[:, None, :] + np.einsum("nij,kj->nki", b, nvec), used


# ----------------------------------------------------------------------------------------------
# origin over the scan


def _hot_pixels(frames: np.ndarray) -> np.ndarray:
    """Hot pixels: brighter than 3x all 8 neighbours in most of the frames (n, Qx, Qy)."""
    foot = np.ones((1, 3, 3), dtype=bool)
    foot[0, 1, 1] = False
    neighbours = ndimage.maximum_filter(frames, footprint=foot, mode="nearest")
    return np.mean(frames > 3.0 * neighbours, axis=0) > 0.5


def _fit_origin(cb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Smooth origin model over the scan: weighted robust quadratic (plane, constant for small scans)."""
    rx, ry = cb.shape[:2]
    x, y = np.meshgrid(np.linspace(-1, 1, rx), np.linspace(-1, 1, ry), indexing="ij")
    n = rx * ry
    cols = [np.ones_like(x)]
    if n >= 9:
        cols += [x, y]
    if n >= 36:
        cols += [x * x, x * y, y * y]
    d = np.stack(cols, -1).reshape(n, -1)
    c = cb.reshape(n, 2)
    w = np.where(np.isfinite(c).all(1), weight.reshape(n), 0.0)
    w = np.clip(w, 0.0, None)
    if not (w > 0).any():
        raise DataError("no central beam found in any pattern; is the (000) disk on the detector?")
    c = np.nan_to_num(c)
    for _ in range(3):
        sw = np.sqrt(w)[:, None]
        coef, *_ = np.linalg.lstsq(d * sw, c * sw, rcond=None)
        res = np.hypot(*(c - d @ coef).T)
        mad = np.median(res[w > 0]) * 1.4826 + 1e-3
        w = np.where(res > 5 * mad, 0.0, w)
    return (d @ coef).reshape(rx, ry, 2)


# ----------------------------------------------------------------------------------------------
# public entry point


def _symmetry_fold(symmetry: int | str | None, attrs: dict[str, Any]) -> int | None:
    """Fold from the argument, else the file's lattice attribute (a hint), else None (infer)."""
    if symmetry is None:
        lat = attrs.get("lattice")
        try:
            lat = json.loads(lat) if isinstance(lat, str) else lat
            symmetry = int(lat["symmetry"]) if isinstance(lat, dict) and "symmetry" in lat else None
        except (ValueError, TypeError, KeyError):
            symmetry = None
        if symmetry is None:
            return None
    fold = {"hex": 6, "square": 4}.get(symmetry) if isinstance(symmetry, str) else int(symmetry)
    if fold is None or fold not in (1, 2, 3, 4, 6):
        raise ValueError(f"symmetry must be 'hex', 'square', 2, 4, 6 or None (infer), got {symmetry!r}")
    # Every lattice is centrosymmetric: 1 -> 2, 3 -> 6.
    return {1: 2, 3: 6}.get(fold, fold)


def classical_strain(
    data: Dataset4D | np.ndarray,
    reference: str | np.ndarray | None = None,
    symmetry: int | str | None = None,
    probe: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    refine: Literal["template", "centroid"] = "template",
    origin: Literal["scan", "pattern"] = "scan",
    iterations: int = 3,
    min_disks: int = 4,
    rows_per_chunk: int | None = None,
    workers: int = 2,
) -> BaselineResult:
    """Strain maps by classical Bragg-disk detection and lattice fitting (see the module docstring).

    ``data``: a :class:`Dataset4D` or an array ``(Rx, Ry, Qx, Qy)`` (read in row chunks, twice);
    ``reference``: region of :func:`edgestem.strain.reference_mask` (None: whole scan); ``symmetry``:
    ``"hex"``, ``"square"``, a fold, or None (the file's lattice attribute, else inferred);
    ``probe``: a vacuum probe image (default: the mean pattern's central disk); ``progress(n)``:
    called with the scan rows fitted; ``refine``: ``"template"`` (per-disk Poisson template fits,
    the default) or ``"centroid"``; ``origin``: ``"scan"`` (smooth fit of the central beam over the
    scan) or ``"pattern"`` (fitted per pattern); ``iterations``: predict-measure-fit rounds (the
    first uses centroids); ``min_disks``: fewer diffracted disks make a position fail (NaN);
    ``workers``: threads of the FFTs.
    """
    if iterations < 1 or min_disks < 2:
        raise ValueError("iterations must be >= 1 (>= 2 for the template fit) and min_disks >= 2")
    if refine not in ("template", "centroid"):
        raise ValueError(f"refine must be 'template' or 'centroid', got {refine!r}")
    if origin not in ("scan", "pattern"):
        raise ValueError(f"origin must be 'scan' or 'pattern', got {origin!r}")
    free = origin == "pattern"
    t0 = time.perf_counter()
    src = _Source(data)
    rx, ry, qx, qy = src.shape
    fold = _symmetry_fold(symmetry, src.attrs)
    chunk = rows_per_chunk or max(1, _BATCH // ry)
    ref_mask = S.reference_mask((rx, ry), reference)

    # Pass 1: mean pattern, block means, central beam of every pattern.
    bsz = max(1, math.ceil(math.sqrt(rx * ry / _BLOCKS)))
    nbx, nby = math.ceil(rx / bsz), math.ceil(ry / bsz)
    blocks = np.zeros((nbx, nby, qx, qy))
    mean = np.zeros((qx, qy))
    ref_mean = np.zeros((qx, qy))
    cb = np.full((rx, ry, 2), np.nan)
    cb_int = np.zeros((rx, ry))
    geo0: _Geometry | None = None
    c_start = None
    hot = np.zeros((qx, qy), dtype=bool)
    for sl, block in src.rows(chunk):
        blk = block.astype(np.float64)
        if geo0 is None:
            hot = _hot_pixels(blk.reshape(-1, qx, qy))
        blk[..., hot] = 0.0
        mean += blk.sum((0, 1))
        ref_mean += blk[ref_mask[sl]].sum(0)
        for i, r in enumerate(range(sl.start, sl.stop)):
            np.add.at(blocks[r // bsz], np.arange(ry) // bsz, blk[i])
        if geo0 is None:
            c_start, rad = _central_beam(blk.mean((0, 1)))
            geo0 = _Geometry.make(rad)
        flat = blk.reshape(-1, qx, qy)
        flat[:, hot] = np.nan
        pos, inten, _, _ = _refine(flat, np.arange(flat.shape[0]), np.tile(c_start, (flat.shape[0], 1)), geo0, 6)
        cb[sl] = pos.reshape(-1, ry, 2)
        cb_int[sl] = inten.reshape(-1, ry)
    mean /= rx * ry
    if not mean.any():
        raise DataError("all patterns are zero")
    ref_mean /= ref_mask.sum()
    org_map = _fit_origin(cb, cb_int)
    if free:
        # Per-pattern origins: start from each pattern's own central beam where it was found.
        org_map = np.where(np.isfinite(cb), cb, org_map)

    # Probe kernel and reference lattice.
    c_mean, radius = _central_beam(mean)
    if probe is not None:
        probe = np.asarray(probe, dtype=np.float64)
        if probe.ndim != 2 or not np.isfinite(probe).all():
            raise DataError("probe must be a finite 2D image")
        pc, radius = _central_beam(probe)
        kernel, radius, s2 = _probe_kernel(probe, (qx, qy), pc, radius)
    else:
        kernel, radius, s2 = _probe_kernel(mean, (qx, qy), c_mean, radius)
    kernel_ft = np.conj(sfft.rfft2(kernel))
    cand = np.concatenate([mean[None], ref_mean[None], blocks.reshape(-1, qx, qy)])
    # Origin of a block mean: the origin model averaged over the block.
    osum = np.zeros((nbx, nby, 2))
    np.add.at(osum, (np.arange(rx)[:, None] // bsz, np.arange(ry)[None, :] // bsz), org_map)
    cnt = np.zeros((nbx, nby))
    np.add.at(cnt, (np.arange(rx)[:, None] // bsz, np.arange(ry)[None, :] // bsz), 1.0)
    cand_origin = np.concatenate([np.tile(c_mean, (2, 1)), (osum / cnt[..., None]).reshape(-1, 2)])
    b0, fold = _find_lattice(cand, cand_origin, kernel_ft, radius, fold)
    spacing = float(min(np.linalg.norm(b0, axis=0)))
    geo = _Geometry.make(radius, spacing, s2)
    period = 360.0 / fold

    # Pass 2: per-pattern orientation, disk measurement and lattice fit.
    prof: _Profile | None = None
    a_all = np.full((rx, ry, 2, 2), np.nan)
    n_disks = np.zeros((rx, ry), dtype=np.int64)
    for sl, block in src.rows(chunk):
        flat = block.reshape(-1, qx, qy).astype(np.float64)
        flat[:, hot] = np.nan
        org = org_map[sl].reshape(-1, 2)
        a_parts, n_parts, c_parts = [], [], []
        for b_start in range(0, flat.shape[0], _BATCH):
            pats = flat[b_start : b_start + _BATCH]
            corr = _correlate(pats, kernel_ft, workers)
            org_b = org[b_start : b_start + _BATCH]
            if prof is None and refine == "template":
                # The disk profile for the template fit, from this first batch's centroid-measured disks.
                _, _, _, q, used = _fit_batch(pats, corr, org_b, b0, period, geo, iterations, min_disks, None, free)
                pidx = np.broadcast_to(np.arange(pats.shape[0])[:, None], used.shape)
                prof = _estimate_profile(pats, pidx[used], q[used], geo)
            a, nd, c, _, _ = _fit_batch(pats, corr, org_b, b0, period, geo, iterations, min_disks, prof, free)
            a_parts.append(a)
            n_parts.append(nd)
            c_parts.append(c)
        a_all[sl] = np.concatenate(a_parts).reshape(-1, ry, 2, 2)
        n_disks[sl] = np.concatenate(n_parts).reshape(-1, ry)
        org_map[sl] = np.concatenate(c_parts).reshape(-1, ry, 2)
        if progress is not None:
            progress(sl.stop - sl.start)

    valid = np.isfinite(a_all).all((-2, -1))
    failed = int((~valid).sum())
    if not (valid & ref_mask).any():
        raise DataError("no pattern of the reference region could be fitted; choose another reference region")
    fill = np.median(a_all[valid], axis=0)
    a_filled = np.where(valid[..., None, None], a_all, fill)
    # "grain:x,y": the fitted orientations give the grain (ref_mask held only its seed so far)
    grain = S.resolve_reference(a_filled, reference, fold) if isinstance(reference, str) else None
    ref_final = grain if isinstance(grain, np.ndarray) else ref_mask
    maps = S.strain_from_affine(a_filled, reference=ref_final & valid, symmetry=fold)
    maps = {k: np.where(valid, v, np.nan) for k, v in maps.items()}
    elapsed = time.perf_counter() - t0
    return BaselineResult(
        A=a_all,
        maps=maps,
        n_disks=n_disks,
        failed=failed,
        patterns_per_second=rx * ry / max(elapsed, 1e-9),
        lattice=b0,
        symmetry=fold,
        disk_radius=float(radius if prof is None else prof.radius),
        origin=org_map,
    )
