"""The ONE pre-processing of a diffraction pattern: crop, bin, scale, normalise.

Training, evaluation, the classical baseline's input checks and every emulation backend call
:func:`preprocess`; a second code path here is the most common cause of "emulation does not
match", so there is none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgestem.config import PreprocessConfig
from edgestem.errors import DataError


@dataclass(frozen=True)
class Geometry:
    """Where the model's input comes from on the detector: crop box and binning factor."""

    x0: int
    x1: int
    y0: int
    y1: int
    bin: int

    @property
    def out_shape(self) -> tuple[int, int]:
        return ((self.x1 - self.x0) // self.bin, (self.y1 - self.y0) // self.bin)


def geometry(pattern_shape: tuple[int, int], cfg: PreprocessConfig) -> Geometry:
    """Resolve the crop box and binning that turn ``pattern_shape`` into ``cfg.size`` squared."""
    qx, qy = (int(n) for n in pattern_shape)
    size = cfg.size
    if cfg.crop is None:
        b = cfg.bin or max(1, min(qx, qy) // size)
        extent = size * b
        if extent > min(qx, qy):
            raise DataError(
                f"patterns of {qx}x{qy} pixels are smaller than preprocess.size {size} x bin {b}; "
                f"set preprocess.size <= {min(qx, qy) // b} or a smaller bin"
            )
        x0, y0 = (qx - extent) // 2, (qy - extent) // 2
        return Geometry(x0, x0 + extent, y0, y0 + extent, b)
    x0, x1, y0, y1 = cfg.crop
    if x1 > qx or y1 > qy:
        raise DataError(f"preprocess.crop {cfg.crop} lies outside the {qx}x{qy} patterns; choose a crop inside them")
    wx, wy = x1 - x0, y1 - y0
    b = cfg.bin or max(1, min(wx, wy) // size)
    if wx != size * b or wy != size * b:
        raise DataError(
            f"preprocess.crop {cfg.crop} is {wx}x{wy} pixels, not size {size} x bin {b} = {size * b}; "
            "make the crop a square of size * bin pixels"
        )
    return Geometry(x0, x1, y0, y1, b)


def radial_background(x: np.ndarray, percentile: float) -> np.ndarray:
    """Per-pattern background of ``x`` (..., H, W): a percentile of every 1-px ring about the centre.

    The Lorentzian background of the noise model is radial about the direct beam; Bragg disks cover
    less than half of any ring, so a low percentile of a ring is its background.
    """
    h, w = x.shape[-2:]
    ring = np.rint(np.hypot(*np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")))
    ring = ring.astype(int).ravel()
    flat = x.reshape(-1, h * w)
    out = np.empty_like(flat)
    for k in np.unique(ring):
        sel = ring == k
        out[:, sel] = np.percentile(flat[:, sel], percentile, axis=1)[:, None]
    return out.reshape(x.shape)


def preprocess(patterns: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Turn raw patterns ``(..., Qx, Qy)`` into model inputs ``(..., size, size)`` float32.

    Steps, in order: crop (centred or ``cfg.crop``), bin by summing ``bin x bin`` blocks, subtract
    the radial background (``cfg.background``, clipped at zero), scale (linear, sqrt, log),
    normalise per pattern (mean -> 1, max -> 1, none). All-zero patterns stay zero. Raises
    :class:`DataError` on NaN/inf or negative input.
    """
    x = np.asarray(patterns)
    if x.ndim < 2:
        raise DataError(f"patterns must have at least 2 dimensions (..., Qx, Qy), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"patterns must be real numbers, got dtype {x.dtype}")
    g = geometry(x.shape[-2:], cfg)
    x = x[..., g.x0 : g.x1, g.y0 : g.y1].astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise DataError("patterns contain NaN or infinite values; clean the data before pre-processing")
    if x.size and x.min() < 0:
        raise DataError(
            f"patterns contain negative intensities (min {x.min():.4g}); clip at zero or fix the dark reference"
        )
    if g.bin > 1:
        h, w = g.out_shape
        x = x.reshape(*x.shape[:-2], h, g.bin, w, g.bin).sum(axis=(-3, -1))
    if cfg.background == "radial":
        x = np.maximum(x - radial_background(x, cfg.background_percentile), 0.0)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    safe_mean = np.where(mean > 0, mean, 1.0)
    if cfg.scale == "sqrt":
        x = np.sqrt(x)
    elif cfg.scale == "log":
        x = np.log(x / safe_mean + cfg.log_offset) - np.log(cfg.log_offset)
    if cfg.normalize == "mean":
        m = x.mean(axis=(-2, -1), keepdims=True)
        x = x / np.where(m > 0, m, 1.0)
    elif cfg.normalize == "max":
        m = x.max(axis=(-2, -1), keepdims=True)
        x = x / np.where(m > 0, m, 1.0)
    return x.astype(np.float32)
