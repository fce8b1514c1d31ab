"""Per-pattern maximum-likelihood refinement of the affine map (docs/science.md, "The physical limit").

Host-side, offline (``edgestem strain --refine``): after the fast encoder pass, each pattern's affine
map ``A`` (disks move as ``g' = A g``, the convention of :mod:`edgestem.strain`) is refined by
maximising the Poisson likelihood of the pattern under a forward model built from the data.

Forward model (:class:`Template`, :func:`build_template`). The template pattern (the data's mean,
or a learned dictionary pattern) is decomposed into

* a lattice: the central beam's position (the ``origin`` that ``A`` acts about) and two basis
  vectors, found by peak finding and indexing (:func:`find_lattice`) and then fitted to the
  template's disks, so every diffracted disk has a known position ``g``, including the disks that
  only touch the detector (their hidden part is modelled like the rest);
* the moving disks: one radial profile ``f`` (a P-spline fitted to every disk pixel against its
  exact distance from the disk centre, so pixel integration is part of it) times an amplitude per
  disk; optionally (``residual=True``) each Voronoi cell's remainder, Fourier-shifted;
* a static image: the template with the disk cells emptied down to a smooth radial background
  (central beam, background: they do not move);
* the background's shape as an extra term when it holds >= 2 % of the template.

The model of a pattern is ``mu = s * (static + sum_d amp_d f(|x - origin - A g_d|)) + b * background``:
disks move with their radius fixed, the central beam stays put, as in the physics; ``s`` (overall
scale, so counts and normalised intensities both work) and ``b`` are fitted with ``A``. The shift
is exact (an analytic profile, exact derivatives). A Fourier shift of the template's sampled disk
windows instead is 1-3 % of a disk's peak wrong for disks with sub-pixel edges, and the Fourier-
shifted remainder measured worse than leaving it out (it carries the mean template's blur).

Fitting (:func:`refine`): Fisher scoring (Gauss-Newton for the Poisson likelihood) on the 4 entries
of ``A`` plus ``s`` (and ``b``), with step halving when the likelihood drops (low counts), vectorised
over blocks of patterns; a pattern stops once its step moves every disk by less than ``tol_px``.
From identity 2-3 steps reach the final accuracy on the built-in simulator (1 step from a start as
good as the encoder's); at 1e2 counts convergence to 1e-4 px takes more than 12.

Templates: the data's mean is blurred by the data's own strain spread, which costs 10-20 % above
the bound at high counts. :func:`refit_template` re-fits profile and amplitudes to all patterns at
their estimated positions (exact distances, no interpolation), which brings the fit to the level of
the true noise-free template; :func:`refine_dataset` runs mean template -> refine -> refit -> refine
(the refit is skipped at very low counts, where it measured worse). :func:`aligned_mean` (disks
moved back by their estimates and averaged) gives a sharpened mean pattern, e.g. for dictionaries;
as a template it measured worse than the refit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from edgestem.lattice import reduce_basis

__all__ = [
    "Template",
    "find_lattice",
    "build_template",
    "model_patterns",
    "refine",
    "counts_per_unit_of",
    "aligned_mean",
    "refit_template",
    "refine_dataset",
]

# Patterns per vectorised block of the fit (bounds the window arrays to some tens of MB).
_BLOCK = 64
# Floor of the model in the Poisson likelihood, relative to a pattern's mean pixel value.
FLOOR = 1e-4
# refine_dataset re-fits the template only when the estimates' predicted disk-position error is below this.
REFIT_MAX_SIGMA_PX = 0.1


@dataclass
class Template:
    """The forward model of :func:`refine` (see the module docstring); built by :func:`build_template`."""

    shape: tuple[int, int]
    origin: np.ndarray  # (2,) pixel coordinates of the central beam, the point A acts about
    basis: np.ndarray  # (2, 2) rows: lattice basis vectors (pixels), g = index @ basis
    index: np.ndarray  # (n_d, 2) lattice indices of the diffracted disks
    g: np.ndarray  # (n_d, 2) disk positions relative to the origin (pixels)
    frac: np.ndarray  # (n_d, 2) disk centre minus its window's centre pixel, in [-0.5, 0.5]
    amp: np.ndarray  # (n_d,) amplitude of the radial disk profile per disk
    profile: np.ndarray  # (n_r,) radial disk profile (peak 1) tabulated every profile_step pixels
    dprofile: np.ndarray  # (n_r,) its derivative
    profile_step: float
    rcut: float  # the profile is zero beyond this radius (the cells' inradius)
    core: int  # odd window size that holds the radial profile of a disk wherever its centre falls
    windows: np.ndarray  # (n_d, W, W) residual disk content (template minus profile), in the disk's cell
    cells: np.ndarray  # (n_d, W, W) bool: the disk's Voronoi cell within its window
    static: np.ndarray  # (Qx, Qy) the part that does not move (central beam, background)
    background: np.ndarray | None  # (Qx, Qy) smooth background shape (sum 1), or None
    spectra: np.ndarray = field(repr=False)  # (n_d, W, W // 2 + 1) rfft2 of the residual windows

    @property
    def window(self) -> int:
        """Window size W (odd)."""
        return int(self.windows.shape[-1])

    @property
    def uses_residual(self) -> bool:
        """Whether the residual windows hold anything (else they are skipped)."""
        return bool(np.any(self.windows))

    @property
    def eval_window(self) -> int:
        """Window size of the model evaluation: W with residuals, else the profile's core."""
        return self.window if self.uses_residual else self.core


# ----------------------------------------------------------------------------------------------
# lattice finding


def _footprint(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius**2 + 1e-9


def _reduce_basis(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Reduced basis as rows (see :func:`edgestem.lattice.reduce_basis`)."""
    return np.array(reduce_basis(b1, b2), dtype=float)


def find_lattice(pattern: np.ndarray, threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Origin (2,) and basis (2, 2, rows) of the Bragg-disk lattice of a (mean) pattern.

    Peaks of the background-removed pattern (white top-hat) above ``threshold`` times the brightest
    diffracted peak; the brightest peak is the central beam. Indexing on the two shortest independent
    peak vectors, then a weighted least-squares fit of origin and basis to every indexed peak.
    Dynamical patterns can have one strong systematic row and much weaker disks elsewhere: when the
    peaks above ``threshold`` all lie on one line, the threshold is halved (down to 1/8 of it)
    before giving up.
    """
    for k in range(4):
        try:
            return _find_lattice(pattern, threshold / 2**k)
        except _Collinear:
            if k == 3:
                raise ValueError("all peaks lie on one line: cannot index a 2D lattice") from None
    raise AssertionError("unreachable")


class _Collinear(ValueError):
    pass


def _find_lattice(pattern: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    m = ndimage.gaussian_filter(np.asarray(pattern, dtype=np.float64), 0.7)
    qx, qy = m.shape
    tophat = m - ndimage.grey_opening(m, footprint=_footprint(max(3.0, min(qx, qy) / 10)))
    peaks = (tophat == ndimage.maximum_filter(tophat, size=5)) & (tophat > 0)
    # One candidate per plateau of equal maxima (flat-topped disks).
    plateau, n_pl = ndimage.label(peaks, structure=np.ones((3, 3)))
    if n_pl < 3:
        raise ValueError("fewer than 3 peaks in the pattern: cannot find a lattice")
    pos = np.array(ndimage.center_of_mass(peaks, plateau, np.arange(1, n_pl + 1)), dtype=float).reshape(-1, 2)
    vals = np.array(ndimage.maximum(tophat, plateau, np.arange(1, n_pl + 1)), dtype=float)
    c = pos[np.argmax(vals)]
    others = np.hypot(*(pos - c).T) > 2.5
    if not others.any() or vals[others].max() <= 0:
        raise ValueError("no diffracted disks found in the pattern")
    keep = (vals >= threshold * vals[others].max()) | ~others
    pos, vals = pos[keep], vals[keep]
    # Sub-pixel centroids of the top-hat in circular windows re-centred on the estimate.
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1) + np.eye(len(pos)) * 1e12
    rc = np.clip(0.45 * np.sqrt(d2.min(1)), 1.5, 20.0)
    ii, jj = np.mgrid[0:qx, 0:qy]
    wimg = np.maximum(tophat, 0.0)
    for _ in range(5):
        for k in range(len(pos)):
            sel = (ii - pos[k, 0]) ** 2 + (jj - pos[k, 1]) ** 2 <= rc[k] ** 2
            wk = wimg[sel]
            if wk.sum() > 0:
                pos[k] = (ii[sel] * wk).sum() / wk.sum(), (jj[sel] * wk).sum() / wk.sum()
    # Peaks whose centroid window is cut by the detector edge are biased: not used for the fit.
    inside = np.all((pos - rc[:, None] >= -0.5) & (pos + rc[:, None] <= np.array([qx, qy]) - 0.5), axis=1)
    inside[np.argmax(vals)] = True
    pos, vals = pos[inside], vals[inside]
    origin = pos[np.argmax(vals)]
    v = pos - origin
    r = np.hypot(v[:, 0], v[:, 1])
    order = np.argsort(r)
    cand = [k for k in order if r[k] > 2.5]
    b1 = v[cand[0]]
    b2 = None
    for k in cand[1:]:
        cross = abs(b1[0] * v[k, 1] - b1[1] * v[k, 0])
        if cross > 0.5 * r[cand[0]] * r[k]:
            b2 = v[k]
            break
    if b2 is None:
        raise _Collinear("all peaks lie on one line")
    basis = _reduce_basis(b1, b2)
    for tol in (0.25, 0.15, 0.1):
        n = np.rint(np.linalg.solve(basis.T, (pos - origin).T).T)
        resid = np.hypot(*(pos - origin - n @ basis).T)
        ok = resid < tol * np.hypot(*basis[0])
        X = np.concatenate([np.ones((ok.sum(), 1)), n[ok]], axis=1)
        wts = np.sqrt(vals[ok])[:, None]
        sol, *_ = np.linalg.lstsq(X * wts, pos[ok] * wts, rcond=None)
        origin, basis = sol[0], sol[1:]
    return origin, _reduce_basis(basis[0], basis[1])


# ----------------------------------------------------------------------------------------------
# template


def _phase_1d(t: np.ndarray, w: int, real: bool) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (W or W//2+1,) and phase ramps exp(-2 pi i f t) with shape t.shape + (nf,)."""
    f = np.fft.rfftfreq(w) if real else np.fft.fftfreq(w)
    return f, np.exp(-2j * np.pi * t[..., None] * f)


def _shift_windows(spectra: np.ndarray, t: np.ndarray, w: int, derivs: bool = False) -> tuple[np.ndarray, ...]:
    """Fourier-shift windows by t (..., 2) pixels; with ``derivs`` also d/dt_x and d/dt_y of the result."""
    fx, px = _phase_1d(t[..., 0], w, real=False)
    fy, py = _phase_1d(t[..., 1], w, real=True)
    spec = spectra * px[..., :, None] * py[..., None, :]
    out = [np.fft.irfft2(spec, s=(w, w))]
    if derivs:
        out.append(np.fft.irfft2(spec * (-2j * np.pi * fx)[:, None], s=(w, w)))
        out.append(np.fft.irfft2(spec * (-2j * np.pi * fy)[None, :], s=(w, w)))
    return tuple(out)


def _nearest_lattice_point(pts: np.ndarray, origin: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index (..., 2) of the lattice point nearest to each point (..., 2), and the distance to it."""
    f = np.linalg.solve(basis.T, (pts - origin).reshape(-1, 2).T).T
    base = np.floor(f)
    best_d = np.full(len(f), np.inf)
    best_n = np.zeros_like(f)
    for a in (-1, 0, 1, 2):
        for b in (-1, 0, 1, 2):
            n = base + np.array([a, b])
            d = np.hypot(*(origin + n @ basis - pts.reshape(-1, 2)).T)
            better = d < best_d
            best_d[better], best_n[better] = d[better], n[better]
    return best_n.reshape(pts.shape).astype(np.int64), best_d.reshape(pts.shape[:-1])


def _radial_background(tmpl: np.ndarray, origin: np.ndarray, dist: np.ndarray, inradius: float) -> np.ndarray:
    """Smooth radial background: mean of the pixels between disks per 1-px radius bin, interpolated."""
    qx, qy = tmpl.shape
    ii, jj = np.mgrid[0:qx, 0:qy]
    r = np.hypot(ii - origin[0], jj - origin[1])
    sel = dist >= 0.85 * inradius
    if sel.sum() < 8:
        return np.zeros_like(tmpl)
    rb = np.floor(r[sel]).astype(np.int64)
    sums = np.bincount(rb, weights=tmpl[sel])
    cnts = np.bincount(rb)
    have = cnts > 0
    centres = np.nonzero(have)[0] + 0.5
    prof = sums[have] / cnts[have]
    prof = ndimage.uniform_filter1d(prof, 3, mode="nearest") if len(prof) >= 3 else prof
    return np.maximum(np.interp(r, centres, prof), 0.0)


def _radial_profile(
    r: np.ndarray,
    v: np.ndarray,
    disk: np.ndarray,
    n_disks: int,
    rcut: float,
    step: float,
    knot: float = 0.25,
    amp: np.ndarray | None = None,
    bin_px: float = 0.005,
) -> tuple[np.ndarray, np.ndarray]:
    """Common radial profile (tabulated, peak 1) and per-disk amplitudes: v ~ amp[disk] * f(r).

    The samples are first averaged per disk in radius bins of ``bin_px`` (the fit's cost then does
    not grow with the number of samples).

    An even cubic P-spline in r (knots every ``knot`` px, light second-difference penalty) fitted by
    alternating least squares with the amplitudes, tapered to zero over the last half pixel before
    ``rcut``.
    """
    from scipy.interpolate import BSpline

    # Knots and coefficients symmetric about r = 0: the profile is even in r, so it is flat at the
    # disk centre even where no pixel centre fell close to one (e.g. a square lattice whose disks
    # all sit at half-pixel positions).
    nbin = int(math.ceil(rcut / bin_px)) + 1
    key = disk.astype(np.int64) * nbin + np.minimum((r / bin_px).astype(np.int64), nbin - 1)
    key, inv = np.unique(key, return_inverse=True)
    cnt = np.bincount(inv).astype(np.float64)
    r = np.bincount(inv, weights=r) / cnt
    v = np.bincount(inv, weights=v) / cnt
    disk = key // nbin
    m = int(math.floor(rcut / knot + 1e-9))
    inner = knot * np.arange(-m, m + 1)
    t = np.concatenate([[inner[0]] * 3, inner, [inner[-1]] * 3])
    nb = len(t) - 4
    # Symmetric coefficients c[k] = c[nb - 1 - k] (an even spline): c = S @ e.
    half = (nb + 1) // 2
    S = np.zeros((nb, half))
    S[np.arange(half), np.arange(half)] = 1.0
    S[nb - 1 - np.arange(half), np.arange(half)] = 1.0
    X = BSpline.design_matrix(np.clip(r, 0.0, inner[-1]), t, 3).tocsr() @ S
    P = np.diff(np.eye(nb), 2, axis=0) @ S
    if amp is None:  # start: each disk's brightest sample
        amp = np.zeros(n_disks)
        np.maximum.at(amp, disk, v)
        amp = amp / max(np.abs(amp).max(), 1e-300)
    e = np.zeros(half)
    for _ in range(20):
        Xa = amp[disk][:, None] * X
        H = Xa.T @ (cnt[:, None] * Xa)
        lam = 1e-4 * np.trace(H) / half
        e = np.linalg.solve(H + lam * P.T @ P + 1e-12 * np.trace(H) / half * np.eye(half), Xa.T @ (cnt * v))
        f = X @ e
        num = np.bincount(disk, weights=cnt * v * f, minlength=n_disks)
        den = np.bincount(disk, weights=cnt * f * f, minlength=n_disks)
        new = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
        change = np.abs(new - amp).max() / max(np.abs(new).max(), 1e-300)
        amp = new
        if change < 1e-9:
            break
    coef = S @ e
    grid = np.arange(0.0, rcut + 2 * step, step)
    prof = BSpline(t, coef, 3)(np.clip(grid, 0.0, inner[-1]))
    taper = np.clip((rcut - grid) / 0.5, 0.0, 1.0)
    # Intensities are non-negative: a profile dipping below zero would ask the model for negative counts.
    prof = np.maximum(prof, 0.0) * taper * taper * (3.0 - 2.0 * taper)
    peak = float(prof.max())
    if peak <= 0:
        return np.zeros_like(grid), np.zeros(n_disks)
    return prof / peak, amp * peak


def build_template(
    mean_pattern: np.ndarray,
    origin: np.ndarray | None = None,
    basis: np.ndarray | None = None,
    threshold: float = 0.1,
    max_radius_px: float | None = None,
    background: bool | None = None,
    residual: bool = False,
) -> Template:
    """Decompose a template pattern (Qx, Qy) into static part, moving disks and background.

    Each diffracted disk is ``amp_d * f(|x - p_d|)`` (one radial profile ``f`` fitted to all disks,
    shifted exactly) plus, with ``residual``, what that leaves in the disk's Voronoi cell (shifted
    by a Fourier phase ramp; off by default: it measured worse, see the module docstring).
    ``origin``/``basis``: the lattice; pass a previous template's to keep its frame. Default:
    :func:`find_lattice`, then the basis is refined by fitting the disk model to the template
    itself (the peak centroids' small errors would otherwise blur the profile fit).
    ``max_radius_px``: largest distance of a moving pixel from its disk centre (default: the whole
    Voronoi cell). ``background``: include the background term in the model (None: when the smooth
    background holds at least 2 % of the template's intensity).
    """
    tmpl = np.asarray(mean_pattern, dtype=np.float64)
    if tmpl.ndim != 2 or not np.all(np.isfinite(tmpl)):
        raise ValueError("the template must be a finite 2D pattern")
    if origin is not None and basis is not None:
        return _decompose(
            tmpl, np.asarray(origin, float), np.asarray(basis, float), max_radius_px, background, residual
        )
    o2, b2 = find_lattice(tmpl, threshold)
    origin = np.asarray(o2 if origin is None else origin, dtype=float)
    basis = np.asarray(b2 if basis is None else basis, dtype=float)
    for _ in range(2):
        t = _decompose(tmpl, origin, basis, max_radius_px, False, False)
        # Fit the lattice to the template's own disks: the static part keeps only the background there.
        A, _ = refine(tmpl[None], t, steps=10, tol_px=1e-6)
        basis = basis @ A[0].T
    return _decompose(tmpl, origin, basis, max_radius_px, background, residual)


def _decompose(
    tmpl: np.ndarray,
    origin: np.ndarray,
    basis: np.ndarray,
    max_radius_px: float | None,
    background: bool | None,
    residual: bool,
) -> Template:
    """:func:`build_template` for a given lattice."""
    qx, qy = tmpl.shape
    # Voronoi cell geometry of the lattice.
    short = np.array([[a, b] for a in range(-2, 3) for b in range(-2, 3) if (a, b) != (0, 0)]) @ basis
    inradius = 0.5 * float(np.hypot(*short.T).min())
    gx, gy = np.mgrid[-30:31, -30:31] * (max(inradius, 1.0) / 10.0)
    nn, _ = _nearest_lattice_point(np.stack([gx, gy], -1), np.zeros(2), basis)
    in_cell = np.all(nn == 0, axis=-1)
    circum = float(np.hypot(gx[in_cell], gy[in_cell]).max()) + max(inradius, 1.0) / 10.0
    rmax = circum if max_radius_px is None else min(circum, float(max_radius_px))
    rcut = min(inradius, rmax)
    w = 2 * int(math.ceil(rmax + 1.5)) + 1
    half = w // 2
    pad = w + 4
    # Labels of the padded canvas: nearest lattice point and distance to it.
    cx, cy = qx + 2 * pad, qy + 2 * pad
    ci, cj = np.mgrid[0:cx, 0:cy]
    lab, dist = _nearest_lattice_point(np.stack([ci - pad, cj - pad], -1).astype(float), origin, basis)
    on_det = np.zeros((cx, cy), dtype=bool)
    on_det[pad : pad + qx, pad : pad + qy] = True
    bg = _radial_background(tmpl, origin, dist[pad : pad + qx, pad : pad + qy], inradius)
    canvas = np.zeros((cx, cy))
    canvas[pad : pad + qx, pad : pad + qy] = tmpl - bg
    # Disks whose cell (within rmax) reaches the detector.
    corners = np.array([[0, 0], [0, qy - 1], [qx - 1, 0], [qx - 1, qy - 1]], dtype=float)
    fc = np.linalg.solve(basis.T, (corners - origin).T).T
    span = int(math.ceil(rmax / max(inradius, 1e-9))) + 2
    lo, hi = np.floor(fc.min(0)).astype(int) - span, np.ceil(fc.max(0)).astype(int) + span
    idx_list, sl_list, frac_list, cell_list, vis_list = [], [], [], [], []
    for a in range(lo[0], hi[0] + 1):
        for b in range(lo[1], hi[1] + 1):
            if a == 0 and b == 0:
                continue
            n = np.array([a, b])
            p = origin + n @ basis
            c = np.rint(p).astype(int)
            x0, y0 = c[0] - half + pad, c[1] - half + pad
            if x0 < 0 or y0 < 0 or x0 + w > cx or y0 + w > cy:
                continue
            sl = (slice(x0, x0 + w), slice(y0, y0 + w))
            cell = np.all(lab[sl] == n, axis=-1) & (dist[sl] <= rmax)
            vis = cell & on_det[sl]
            if not vis.any():
                continue
            idx_list.append(n)
            sl_list.append(sl)
            frac_list.append(p - c)
            cell_list.append(cell)
            vis_list.append(vis)
    if not idx_list:
        raise ValueError("no diffracted disk on the detector")
    index = np.array(idx_list)
    frac = np.array(frac_list)
    cells = np.array(cell_list)
    visible = np.array(vis_list)
    content = np.array([canvas[sl] for sl in sl_list]) * visible
    # Radial profile and amplitudes from the visible pixels within rcut of each disk centre.
    o = np.arange(w) - half
    dx = o[None, :, None] - frac[:, 0, None, None]
    dy = o[None, None, :] - frac[:, 1, None, None]
    r = np.hypot(dx, dy)
    use = visible & (r < rcut)
    step = 0.005
    # The profile from the inner disks (the first two shells): in a mean pattern they are the least
    # blurred by the data's strain spread. Then every disk's amplitude with that profile.
    g = index @ basis
    gn = np.hypot(g[:, 0], g[:, 1])
    inner = use & (gn <= 1.6 * gn.min())[:, None, None]
    prof, _ = _radial_profile(r[inner], content[inner], np.nonzero(inner)[0], len(index), rcut, step)
    f = np.interp(r, np.arange(len(prof)) * step, prof, right=0.0)
    num = np.bincount(np.nonzero(use)[0], weights=(content * f)[use], minlength=len(index))
    den = np.bincount(np.nonzero(use)[0], weights=(f * f)[use], minlength=len(index))
    amp = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    dprof = np.gradient(prof, step)
    model = amp[:, None, None] * np.interp(r, np.arange(len(prof)) * step, prof, right=0.0)
    resid = np.where(visible, content - model, 0.0) * cells if residual else np.zeros_like(content)
    # Static part: the template with the disk cells emptied down to the smooth background (what the
    # residual does not carry is not left behind as a ghost of the template's disks).
    hollow = np.zeros((cx, cy))
    for d, sl in enumerate(sl_list):
        hollow[sl] += content[d] * cells[d]
    static = tmpl - hollow[pad : pad + qx, pad : pad + qy]
    use_bg = background if background is not None else bool(bg.sum() >= 0.02 * max(tmpl.sum(), 1e-300))
    bshape = bg / bg.sum() if use_bg and bg.sum() > 0 else None
    return Template(
        shape=(qx, qy),
        origin=origin,
        basis=basis,
        index=index,
        g=g,
        frac=frac,
        amp=amp,
        profile=prof,
        dprofile=dprof,
        profile_step=step,
        rcut=rcut,
        core=2 * int(math.ceil(rcut + 0.5)) + 1,
        windows=resid,
        cells=cells,
        static=static,
        background=bshape,
        spectra=np.fft.rfft2(resid),
    )


# ----------------------------------------------------------------------------------------------
# model


def _place(t: Template, A: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corners of W = w windows (n, n_d, 2), disk centres minus window centres (n, n_d, 2), residual shifts."""
    p = t.origin + np.einsum("nij,dj->ndi", A, t.g)
    c = np.rint(p)
    return c.astype(np.int64) - w // 2, p - c, p - c - t.frac


def _disk_windows(t: Template, A: np.ndarray, jac: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Corners and the moved disk windows (n, n_d, w, w) [with d/dp_x, d/dp_y] under A."""
    w = t.eval_window
    corner, off, shift = _place(t, A, w)
    o = np.arange(w) - w // 2
    dx = o[:, None] - off[..., 0, None, None]
    dy = o[None, :] - off[..., 1, None, None]
    r = np.sqrt(dx * dx + dy * dy)
    # Linear interpolation in the fine tables (gathers: several times faster than np.interp).
    u = np.minimum(r * (1.0 / t.profile_step), len(t.profile) - 1.000001)
    k = u.astype(np.intp)
    u -= k
    amp = t.amp[None, :, None, None]
    f = np.take(t.profile[:-1], k)
    f += u * np.take(np.diff(t.profile), k)
    out = [amp * f]
    if jac:
        fp = np.take(t.dprofile[:-1], k)
        fp += u * np.take(np.diff(t.dprofile), k)
        q = -amp * fp / np.maximum(r, 1e-12)
        out += [q * dx, q * dy]
    if t.uses_residual:
        res = _shift_windows(t.spectra, shift, w, derivs=jac)
        out = [a + b for a, b in zip(out, res, strict=True)]
    return corner, out


def _scatter(t: Template, corner: np.ndarray, images: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Scatter-add per-disk windows (n, n_d, W, W) at their corners into (n, Qx * Qy) images."""
    qx, qy = t.shape
    w = images[0].shape[-1]
    o = np.arange(w)
    ix = corner[..., 0, None] + o  # (n, n_d, W)
    iy = corner[..., 1, None] + o
    inside = ((ix >= 0) & (ix < qx))[..., :, None] & ((iy >= 0) & (iy < qy))[..., None, :]
    flat = (np.arange(n)[:, None, None, None] * qx + np.clip(ix, 0, qx - 1)[..., :, None]) * qy + np.clip(
        iy, 0, qy - 1
    )[..., None, :]
    flat = flat[inside]
    return [np.bincount(flat, weights=im[inside], minlength=n * qx * qy).reshape(n, qx * qy) for im in images]


def _evaluate(
    t: Template, A: np.ndarray, s: np.ndarray, b: np.ndarray, jac: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model (n, P) and, with ``jac``, its Jacobian (n, K, P) in (A00, A01, A10, A11, s[, b])."""
    n = A.shape[0]
    corner, outs = _disk_windows(t, A, jac)
    static = t.static.ravel()
    if not jac:
        disks = _scatter(t, corner, [outs[0]], n)[0]
        mu = s[:, None] * (static + disks)
        if t.background is not None:
            mu += b[:, None] * t.background.ravel()
        return mu, None
    gx = t.g[:, 0][None, :, None, None]
    gy = t.g[:, 1][None, :, None, None]
    val, dx, dy = outs
    disks, j00, j01, j10, j11 = _scatter(t, corner, [val, dx * gx, dx * gy, dy * gx, dy * gy], n)
    base = static + disks
    mu = s[:, None] * base
    cols = [s[:, None] * j for j in (j00, j01, j10, j11)] + [base]
    if t.background is not None:
        mu += b[:, None] * t.background.ravel()
        cols.append(np.broadcast_to(t.background.ravel(), base.shape))
    return mu, np.stack(cols, axis=1)


def model_patterns(
    t: Template, A: np.ndarray, scale: np.ndarray | float = 1.0, bg: np.ndarray | float = 0.0
) -> np.ndarray:
    """Predicted patterns (n, Qx, Qy) of affine maps A (n, 2, 2) with scale ``s`` and background weight ``b``."""
    A = np.asarray(A, dtype=float).reshape(-1, 2, 2)
    n = A.shape[0]
    s = np.broadcast_to(np.asarray(scale, dtype=float), (n,))
    b = np.broadcast_to(np.asarray(bg, dtype=float), (n,))
    mu, _ = _evaluate(t, A, s, b, jac=False)
    return mu.reshape(n, *t.shape)


# ----------------------------------------------------------------------------------------------
# fit


def _loglik(y: np.ndarray, mu: np.ndarray, poisson: bool, floor: np.ndarray) -> np.ndarray:
    """Poisson ``sum(y log mu - mu)`` (or ``-sum((y - mu)^2) / 2``) per pattern."""
    if poisson:
        m = np.maximum(mu, floor[:, None])
        return (y * np.log(m) - m).sum(axis=1)
    return -0.5 * ((y - mu) ** 2).sum(axis=1)


def _fit_block(
    y: np.ndarray,
    t: Template,
    A: np.ndarray,
    steps: int,
    poisson: bool,
    tol_px: float,
    max_step_px: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fisher scoring with backtracking for one block of patterns y (n, P) from A (n, 2, 2).

    At most ``steps`` updates, each followed by an evaluation of the model: from an improved point
    the Fisher-scoring step is taken; from a point worse than the last accepted one the step is
    halved instead (at low counts plain Fisher scoring can cycle). Returns the best point evaluated.
    """
    n = y.shape[0]
    K = 5 + (t.background is not None)
    total = y.sum(axis=1)
    base0 = _evaluate(t, A, np.ones(n), np.zeros(n), jac=False)[0].sum(axis=1)
    acc = np.zeros((n, K))
    acc[:, :4] = A.reshape(n, 4)
    acc[:, 4] = np.where((total > 0) & (base0 > 0), total / np.maximum(base0, 1e-300), 0.0)
    trial = acc.copy()
    step = np.zeros((n, K))
    ll_acc = np.full(n, -np.inf)
    # Floor of the model in the Poisson likelihood, relative to the pattern's mean pixel value.
    floor = np.maximum(total / y.shape[1], 1e-300) * FLOOR
    s_min = 1e-12 * np.maximum(total, 1e-300)
    active = total > 0
    converged = np.zeros(n, dtype=bool)
    n_steps = np.zeros(n, dtype=np.int64)
    cov = np.full((n, 4, 4), np.nan)

    def moves(d: np.ndarray) -> np.ndarray:
        """Largest disk displacement (pixels) of parameter steps d (m, K)."""
        return np.abs(np.einsum("nij,dj->ndi", d[:, :4].reshape(-1, 2, 2), t.g)).max(axis=(1, 2))

    for it in range(steps + 1):
        last = it == steps  # the final evaluation only checks the last step
        ia = np.nonzero(active)[0]
        if not len(ia):
            break
        th = trial[ia]
        bg = th[:, 5] if K == 6 else np.zeros(len(ia))
        mu, J = _evaluate(t, th[:, :4].reshape(-1, 2, 2), th[:, 4], bg, jac=True)
        assert J is not None
        ll = _loglik(y[ia], mu, poisson, floor[ia])
        better = ll >= ll_acc[ia] - 1e-12 * np.abs(ll_acc[ia])
        # Worse than the last accepted point: halve the step.
        iw = ia[~better]
        if len(iw) and not last:
            step[iw] *= 0.5
            trial[iw] = acc[iw] + step[iw]
            n_steps[iw] += 1
            small = moves(step[iw]) < tol_px
            converged[iw[small]] = True
            active[iw[small]] = False
        # Improved: accept, then the Fisher-scoring step from here.
        ib = ia[better]
        if not len(ib):
            continue
        acc[ib], ll_acc[ib] = trial[ib], ll[better]
        mu, J, yb = mu[better], J[better], y[ib]
        if poisson:
            # The likelihood uses max(mu, floor): where the floor holds it does not depend on the parameters.
            above = mu > floor[ib, None]
            wts = np.where(above, 1.0 / np.maximum(mu, floor[ib, None]), 0.0)
            r = np.where(above, yb * wts - 1.0, 0.0)
        else:
            wts = np.ones_like(mu)
            r = yb - mu
        H = np.einsum("nkp,nlp->nkl", J * wts[:, None, :], J)
        grad = np.einsum("nkp,np->nk", J, r)
        # A tiny ridge keeps degenerate patterns (e.g. all counts in one pixel) solvable
        # (relative to each diagonal entry, so that it does not depend on the parameters' units).
        H += np.einsum("nk,kl->nkl", 1e-10 * np.diagonal(H, axis1=1, axis2=2) + 1e-300, np.eye(K))
        Hinv = np.linalg.inv(H)
        cov[ib] = Hinv[:, :4, :4]
        delta = np.einsum("nkl,nl->nk", Hinv, grad)
        ok = np.all(np.isfinite(delta), axis=1)
        delta[~ok] = 0.0
        mv = moves(delta)
        delta *= np.where(mv > max_step_px, max_step_px / np.maximum(mv, 1e-300), 1.0)[:, None]
        done = ok & (moves(delta) < tol_px)
        converged[ib[done]] = True
        active[ib[done | ~ok]] = False
        if last:
            break
        step[ib] = delta
        trial[ib] = acc[ib] + delta
        trial[ib, 4] = np.maximum(trial[ib, 4], s_min[ib])
        n_steps[ib] += 1
    loglik = np.where(np.isfinite(ll_acc), ll_acc, 0.0)
    # Predicted standard deviation of a disk position, RMS over the disks (pixels).
    gg = np.einsum("di,dj->dij", t.g, t.g)  # (n_d, 2, 2)
    var = np.einsum("dkl,nikil->nd", gg, cov.reshape(n, 2, 2, 2, 2)) / 2.0
    sigma_px = np.sqrt(np.mean(var, axis=1)) if len(t.g) else np.full(n, np.nan)
    info = {
        "loglik": loglik,
        "sigma_px": sigma_px,
        "cov": cov,
        "converged": converged,
        "steps": n_steps,
        "scale": acc[:, 4].copy(),
        "background": acc[:, 5].copy() if K == 6 else np.zeros(n),
    }
    return acc[:, :4].reshape(n, 2, 2), info


def counts_per_unit_of(patterns: np.ndarray, tol: float = 1e-3) -> float | None:
    """Electrons per unit of the data: ``1 / q`` when every value is a multiple of the smallest positive one ``q``.

    Counts give 1, normalised Poisson data (counts / c, e.g. the background noise model) give ``c``;
    data that are not quantised (noise-free simulations, read noise, gain-corrected frames) give None.
    """
    y = np.asarray(patterns, dtype=np.float64).ravel()
    pos = y[y > 0]
    if not len(pos):
        return None
    q = float(pos.min())
    sample = pos[:: max(1, len(pos) // 100000)] / q
    small = sample[sample <= 1000.0]  # where float rounding cannot hide the quantisation
    if float(sample.max()) > 1e9 or np.max(np.abs(small - np.rint(small))) > tol:
        return None
    return 1.0 / q


def refine(
    patterns: np.ndarray,
    template: Template,
    A0: np.ndarray | None = None,
    steps: int = 12,
    poisson: bool = True,
    progress: Callable[[int], None] | None = None,
    tol_px: float = 1e-4,
    max_step_px: float = 2.0,
    counts_per_unit: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Maximum-likelihood affine maps (N, 2, 2) of patterns (N, Qx, Qy) (or (Rx, Ry, Qx, Qy)).

    ``A0``: starting maps in the template's frame (None: identity). At most ``steps`` Fisher-scoring
    steps per pattern; a pattern stops (converged) once its step moves every disk by less than
    ``tol_px``; a step moving a disk by more than ``max_step_px`` is shortened. ``poisson=False``:
    least squares instead. ``progress(n)`` is called with the number of patterns just finished.
    ``counts_per_unit``: electrons per unit of the data (None: detected by :func:`counts_per_unit_of`,
    1 when the data are not quantised); it does not change ``A``, only the units of ``loglik`` and
    ``cov``, which are then for counts.
    Returns ``A`` and ``info``: per pattern ``loglik`` (final), ``converged`` (bool), ``steps``
    (model evaluations), ``scale`` and ``background`` (the fitted ``s`` and ``b``), ``cov``
    (4, 4): the inverse Fisher information of ``A``'s entries (row-major, the other parameters
    marginalised; meaningful when the data are counts) and ``sigma_px``: the predicted standard
    deviation of a disk position from it, RMS over the disks. Patterns without counts (or with
    non-finite values) keep ``A0``, are flagged not converged and have ``loglik`` 0 and NaN ``cov``.
    """
    x = np.asarray(patterns)
    if x.shape[-2:] != tuple(template.shape):
        raise ValueError(f"patterns of shape {x.shape[-2:]} do not match the template's {template.shape}")
    lead = x.shape[:-2]
    y = x.reshape(-1, template.shape[0] * template.shape[1]).astype(np.float64)
    n = y.shape[0]
    if A0 is None:
        A = np.tile(np.eye(2), (n, 1, 1))
    else:
        A = np.array(A0, dtype=np.float64).reshape(-1, 2, 2)
        if A.shape[0] != n:
            raise ValueError(f"A0 holds {A.shape[0]} maps for {n} patterns")
    # Non-finite patterns are treated as empty; negative values (dark-subtracted data) as zero.
    y[~np.all(np.isfinite(y), axis=1)] = 0.0
    np.maximum(y, 0.0, out=y)
    cpu = (counts_per_unit_of(y) or 1.0) if counts_per_unit is None else float(counts_per_unit)
    y *= cpu
    parts = []
    for i0 in range(0, n, _BLOCK):
        sl = slice(i0, min(n, i0 + _BLOCK))
        A[sl], part = _fit_block(y[sl], template, A[sl], steps, poisson, tol_px, max_step_px)
        parts.append(part)
        if progress is not None:
            progress(sl.stop - sl.start)
    info = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    if info:
        info["scale"] /= cpu
        info["background"] /= cpu
    return A.reshape(*lead, 2, 2), {k: v.reshape(*lead, *v.shape[1:]) for k, v in info.items()}


def aligned_mean(patterns: np.ndarray, template: Template, A: np.ndarray) -> np.ndarray:
    """Mean pattern (Qx, Qy) after moving each pattern's disks back from ``A g`` to ``g`` (the template frame).

    Each disk's cell is cut at its estimated position, Fourier-shifted back by the sub-pixel rest and
    added at its template position; the other pixels (central beam, background) are averaged as they
    are. Pixels whose moved-back content came from beyond the detector are averaged over the
    patterns that saw them.
    """
    qx, qy = template.shape
    x = np.asarray(patterns, dtype=np.float64).reshape(-1, qx, qy)
    A = np.asarray(A, dtype=np.float64).reshape(-1, 2, 2)
    w = template.window
    half = w // 2
    pad = w + 4
    cells = template.cells
    shape = (qx + 2 * pad, qy + 2 * pad)
    covered = np.zeros(shape)
    c0 = np.rint(template.origin + template.g).astype(np.int64) - half + pad
    for d in range(len(template.g)):
        covered[c0[d, 0] : c0[d, 0] + w, c0[d, 1] : c0[d, 1] + w] += cells[d]
    total = np.zeros(shape)
    weight = np.zeros(shape)
    o = np.arange(w)
    for i0 in range(0, len(x), _BLOCK):
        xb = x[i0 : i0 + _BLOCK]
        n = len(xb)
        canvas = np.zeros((n, *shape))
        canvas[:, pad : pad + qx, pad : pad + qy] = xb
        valid = np.zeros(shape)
        valid[pad : pad + qx, pad : pad + qy] = 1.0
        corner, _, shift = _place(template, A[i0 : i0 + n], w)
        corner = corner + pad
        ix = np.clip(corner[..., 0, None] + o, 0, shape[0] - 1)[..., :, None]
        iy = np.clip(corner[..., 1, None] + o, 0, shape[1] - 1)[..., None, :]
        win = canvas[np.arange(n)[:, None, None, None], ix, iy]
        back = _shift_windows(np.fft.rfft2(win), -shift, w)[0] * cells
        seen = valid[ix, iy] * cells
        summed, nseen = back.sum(0), seen.sum(0)
        for d in range(len(template.g)):
            total[c0[d, 0] : c0[d, 0] + w, c0[d, 1] : c0[d, 1] + w] += summed[d]
            weight[c0[d, 0] : c0[d, 0] + w, c0[d, 1] : c0[d, 1] + w] += nseen[d]
        total += (canvas * (covered == 0)).sum(0)
        weight += n * (covered == 0) * valid
    out = np.divide(total, weight, out=np.zeros(shape), where=weight > 0.5)
    return np.maximum(out[pad : pad + qx, pad : pad + qy], 0.0)


def refit_template(
    patterns: np.ndarray,
    template: Template,
    A: np.ndarray,
    info: dict[str, np.ndarray],
    max_patterns: int = 4096,
) -> Template:
    """The template's disk profile and amplitudes re-fitted to the patterns at their estimated positions.

    Every pixel within the profile's radius of a moved disk ``A g`` is a sample of
    ``amp_d f(r)`` (after removing the fitted scale, static part and background), at its exact
    distance from the disk centre: no interpolation, and the spread of sub-pixel positions over the
    data resolves the profile more finely than one template pattern does. Least squares over at most
    ``max_patterns`` patterns (evenly spaced) with counts; ``info`` is :func:`refine`'s (``scale``,
    ``background``). Lattice, static part and background are kept, so the frame does not change.
    """
    t = template
    qx, qy = t.shape
    x = np.asarray(patterns).reshape(-1, qx * qy)
    A = np.asarray(A, dtype=np.float64).reshape(-1, 2, 2)
    scale = np.asarray(info["scale"], dtype=np.float64).ravel()
    bgw = np.asarray(info["background"], dtype=np.float64).ravel()
    use = np.nonzero((scale > 0) & np.all(np.isfinite(A.reshape(-1, 4)), axis=1))[0]
    if len(use) == 0:
        return t
    use = use[np.linspace(0, len(use) - 1, min(len(use), max_patterns)).astype(np.int64)]
    w = t.core
    o = np.arange(w) - w // 2
    rs, vs, ds = [], [], []
    for i0 in range(0, len(use), _BLOCK):
        sel = use[i0 : i0 + _BLOCK]
        corner, off, _ = _place(t, A[sel], w)
        dx = o[:, None] - off[..., 0, None, None]
        dy = o[None, :] - off[..., 1, None, None]
        r = np.sqrt(dx * dx + dy * dy)
        ix = (corner[..., 0, None] + np.arange(w))[..., :, None]
        iy = (corner[..., 1, None] + np.arange(w))[..., None, :]
        inside = (ix >= 0) & (ix < qx) & (iy >= 0) & (iy < qy) & (r < t.rcut)
        flat = np.clip(ix, 0, qx - 1) * qy + np.clip(iy, 0, qy - 1)
        y = np.take_along_axis(x[sel].astype(np.float64), flat.reshape(len(sel), -1), axis=1).reshape(flat.shape)
        v = y / scale[sel, None, None, None] - t.static.ravel()[flat]
        if t.background is not None:
            v -= (bgw[sel] / scale[sel])[:, None, None, None] * t.background.ravel()[flat]
        d = np.broadcast_to(np.arange(len(t.g))[None, :, None, None], r.shape)
        rs.append(r[inside])
        vs.append(v[inside])
        ds.append(d[inside])
    prof, amp = _radial_profile(
        np.concatenate(rs), np.concatenate(vs), np.concatenate(ds), len(t.g), t.rcut, t.profile_step, amp=t.amp
    )
    return replace(t, profile=prof, dprofile=np.gradient(prof, t.profile_step), amp=amp)


def refine_dataset(
    patterns: np.ndarray,
    template_pattern: np.ndarray | None = None,
    A0: np.ndarray | None = None,
    steps: int = 12,
    rounds: int = 1,
    refit_max_sigma_px: float = REFIT_MAX_SIGMA_PX,
    poisson: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], Template]:
    """Template from the data, refine, then up to ``rounds`` times re-fit the template and refine again.

    ``template_pattern``: the starting template (None: the mean of ``patterns``). A round
    (:func:`refit_template`, then :func:`refine` from the current estimates) runs only while the
    median predicted disk-position error ``sigma_px`` is below ``refit_max_sigma_px``: with noisier
    estimates the re-fitted profile is blurred by the estimates' own errors and measured worse than
    the mean's. Every round keeps the first template's lattice, so all estimates share one frame.
    ``progress(n)`` counts patterns (each pass over the data counts them again).
    """
    qx, qy = np.asarray(patterns).shape[-2:]
    x = np.asarray(patterns).reshape(-1, qx, qy)
    tp = x.mean(axis=0, dtype=np.float64) if template_pattern is None else template_pattern
    t = build_template(tp)
    A, info = refine(x, t, A0, steps=steps, poisson=poisson, progress=progress)
    counts = counts_per_unit_of(x) is not None
    for _ in range(rounds):
        sig = info["sigma_px"][np.isfinite(info["sigma_px"])]
        if counts and (not len(sig) or float(np.median(sig)) > refit_max_sigma_px):
            break
        t = refit_template(x, t, A, info)
        A, info = refine(x, t, A, steps=steps, poisson=poisson, progress=progress)
    lead = np.asarray(patterns).shape[:-2]
    return A.reshape(*lead, 2, 2), {k: v.reshape(*lead, *v.shape[1:]) for k, v in info.items()}, t
