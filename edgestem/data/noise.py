"""Seeded noise models (docs/science.md, "Noise models"): Lorentzian background + Poisson, dose-limited Poisson,
detector read noise and hot pixels.

Units of the output:

* ``background``: the pattern is normalised to sum 1, mixed with the background and drawn at
  ``counts_per_probe`` electrons; the counts are divided by ``counts_per_probe`` again, so a pattern
  sums to about 1 (normalised intensity, quantised in steps of ``1 / counts_per_probe``).
* ``dose``: electron counts; a pattern sums to about ``dose``.
* ``none``: the input, unchanged, unless read noise or hot pixels are asked for, which are then
  applied to the input as if it held counts.

Read noise is Gaussian with standard deviation ``read_noise`` in counts (divided by
``counts_per_probe`` for the background model to stay in its units). Afterwards the frame is clipped
at zero: a detector's processed (dark-subtracted, thresholded) frames are non-negative, and edgestem's
readers reject negative intensities.

Hot pixels sit at fixed detector positions (:func:`hot_pixel_mask`, the same for every pattern, as
on a real detector) and read a saturated value: ``HOT_PIXEL_FACTOR`` (50) times the expected mean
count per pixel of a pattern (``50 * counts / (Qx Qy)``, expressed in the output's units), the same
value in every frame.

All draws come from generators seeded by ``(seed, stream id, scan row)`` (:func:`noise_rng`, the
rule of :mod:`edgestem.seeds`), so the noise of a scan row does not depend on how the scan is chunked.
A noise level given as a number on an axis (background weight ``w`` or dose) becomes a noise model
in one place, :func:`noise_at`; lists of levels typed on the command line are read by
:func:`parse_levels`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.config import NoiseConfig
from edgestem.data.io import json_attr
from edgestem.errors import ConfigError, DataError
from edgestem.seeds import STREAMS

__all__ = [
    "HOT_PIXEL_FACTOR",
    "NOISE_STREAM",
    "HOT_PIXEL_STREAM",
    "lorentzian_background",
    "hot_pixel_mask",
    "noise_rng",
    "is_active",
    "noise_at",
    "noise_levels",
    "parse_levels",
    "apply_noise",
    "noise_units",
    "describe",
    "add_noise_to_file",
]

HOT_PIXEL_FACTOR = 50.0
NOISE_STREAM = STREAMS["noise"]
HOT_PIXEL_STREAM = STREAMS["hot_pixels"]


def _shape2(size: int | tuple[int, int]) -> tuple[int, int]:
    """A pattern shape from an int (square) or a pair."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    qx, qy = size
    return int(qx), int(qy)


def lorentzian_background(size: int | tuple[int, int], hwhm_px: float) -> np.ndarray:
    """Lorentzian ``1 / (1 + (q / hwhm)^2)`` centred at the pattern centre ``(Q - 1) / 2``, sum 1."""
    qx, qy = _shape2(size)
    x = np.arange(qx) - (qx - 1) / 2
    y = np.arange(qy) - (qy - 1) / 2
    q2 = x[:, None] ** 2 + y[None, :] ** 2
    b = 1.0 / (1.0 + q2 / float(hwhm_px) ** 2)
    return b / b.sum()


def hot_pixel_mask(size: int | tuple[int, int], fraction: float, seed: int) -> np.ndarray:
    """Fixed boolean mask of ``round(fraction * Qx * Qy)`` hot detector pixels, drawn from ``seed``."""
    qx, qy = _shape2(size)
    n = int(round(fraction * qx * qy))
    mask = np.zeros(qx * qy, dtype=bool)
    if n > 0:
        rng = np.random.default_rng([int(seed), HOT_PIXEL_STREAM])
        mask[rng.choice(qx * qy, size=n, replace=False)] = True
    return mask.reshape(qx, qy)


def noise_rng(seed: int, row: int) -> np.random.Generator:
    """The noise generator of scan row ``row``: stream ``NOISE_STREAM`` of ``seed``."""
    return np.random.default_rng([int(seed), NOISE_STREAM, int(row)])


AXES = {"w": "background", "background": "background", "dose": "dose"}  # how a level's axis may be named


def noise_at(axis: str, level: float, counts_per_probe: float | None = None) -> NoiseConfig:
    """The ONE noise model of one level: background weight ``w`` (axis ``w`` or ``background``) or ``dose``.

    Background: the weight ``w`` of the background, then Poisson at ``counts_per_probe`` electrons
    per pattern (the config's default when None). With no ``counts_per_probe`` given, w = 0 is no
    noise at all: the clean patterns an evaluation table starts from. Given (noise augmentation,
    robustness studies), the Poisson draw stays at w = 0. Dose: Poisson at ``level`` electrons per pattern.
    """
    model = AXES.get(axis)
    if model is None:
        raise ConfigError(f"noise axis {axis!r}: choose w (background) or dose")
    value = float(level)
    if model == "dose":
        return NoiseConfig(model="dose", dose=value)
    if counts_per_probe is None:
        return NoiseConfig(model="background", w=value) if value > 0 else NoiseConfig(model="none")
    return NoiseConfig(model="background", w=value, counts_per_probe=counts_per_probe)


def noise_levels(values: list[float], axis: str) -> list[tuple[str, NoiseConfig]]:
    """Labelled evaluation levels ``[("w=0.25", NoiseConfig), ...]`` (``w`` or ``dose``; w = 0 is clean)."""
    name = "dose" if AXES.get(axis) == "dose" else "w"
    return [(f"{name}={v:g}", noise_at(name, v)) for v in values]


def parse_levels(
    noise_w: str | None, dose: str | None, options: tuple[str, str] = ("--eval-noise-w", "--eval-dose")
) -> list[tuple[str, NoiseConfig]] | None:
    """Levels from '0,0.25,0.5' (background w) or '1e4,1e3' (dose); None when neither is given.

    ``options`` name the two command-line options in the one-line errors.
    """
    if noise_w and dose:
        raise ConfigError(f"give either {options[0]} or {options[1]}, not both")
    text, axis = (noise_w, "w") if noise_w else (dose, "dose")
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"noise levels {text!r}: give numbers separated by commas") from None
    if any(v < 0 or (axis == "w" and v >= 1) or (axis == "dose" and v <= 0) for v in values):
        raise ConfigError(f"noise levels {text!r}: w must lie in [0, 1), doses must be > 0")
    return noise_levels(values, axis)


def is_active(noise: NoiseConfig) -> bool:
    """True when ``noise`` changes data (a shot-noise model, read noise or hot pixels)."""
    return noise.model != "none" or noise.read_noise > 0 or noise.hot_pixels > 0


def _scale(noise: NoiseConfig) -> float:
    """Electrons per pattern of the shot-noise model (1 for ``none``: the data are taken as counts)."""
    if noise.model == "background":
        return float(noise.counts_per_probe)
    if noise.model == "dose":
        return float(noise.dose)
    return 1.0


def apply_noise(
    patterns: np.ndarray,
    noise: NoiseConfig,
    rng: np.random.Generator,
    hot_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Noisy float32 copy of ``patterns`` ``(..., Qx, Qy)`` under ``noise`` (see the module docstring).

    ``hot_mask``: fixed ``(Qx, Qy)`` hot-pixel mask; None with ``noise.hot_pixels > 0`` uses
    ``hot_pixel_mask(shape, noise.hot_pixels, seed=0)``.
    """
    x = np.asarray(patterns)
    if x.ndim < 2:
        raise ValueError(f"patterns must have shape (..., Qx, Qy), got {x.shape}")
    if not is_active(noise):
        return x.astype(np.float32, copy=True)
    qshape = x.shape[-2:]
    x = x.astype(np.float64)
    if noise.model in ("background", "dose"):
        total = x.sum(axis=(-2, -1), keepdims=True)
        dp = np.divide(x, total, out=np.zeros_like(x), where=total > 0)
        if noise.model == "background":
            dp = (1.0 - noise.w) * dp + noise.w * lorentzian_background(qshape, noise.background_hwhm_px)
            counts = float(noise.counts_per_probe)
            x = rng.poisson(dp * counts).astype(np.float64) / counts
        else:
            x = rng.poisson(dp * float(noise.dose)).astype(np.float64)
    unit = 1.0 / float(noise.counts_per_probe) if noise.model == "background" else 1.0
    if noise.read_noise > 0:
        x = x + rng.normal(0.0, noise.read_noise * unit, size=x.shape)
        np.maximum(x, 0.0, out=x)
    if noise.hot_pixels > 0:
        if hot_mask is None:
            hot_mask = hot_pixel_mask(qshape, noise.hot_pixels, 0)
        hot_mask = np.asarray(hot_mask, dtype=bool)
        if hot_mask.shape != qshape:
            raise ValueError(f"hot_mask has shape {hot_mask.shape}, expected the pattern shape {qshape}")
        x[..., hot_mask] = HOT_PIXEL_FACTOR * _scale(noise) * unit / (qshape[0] * qshape[1])
    return x.astype(np.float32)


def noise_units(noise: NoiseConfig, clean: str = "normalised intensity (sum 1 per pattern)") -> str:
    """Units of the data after ``noise`` (``clean``: the units of the data before)."""
    if noise.model == "background":
        return f"normalised intensity (electron counts / {noise.counts_per_probe:g}, about 1 per pattern)"
    if noise.model == "dose":
        return "electron counts"
    return clean


def _num(v: float) -> str:
    """Compact number: 100000 -> '1e5', 25000 -> '2.5e4', 500 -> '500'."""
    s = f"{v:.3g}"
    if "e" in s:
        mant, exp = s.split("e")
        return f"{mant}e{int(exp)}"
    return s


def describe(noise: NoiseConfig) -> str:
    """Short human description, e.g. ``'background w=0.25, 1e5 counts'`` or ``'dose 1e3 e-/pattern'``."""
    if noise.model == "background":
        parts = [f"background w={noise.w:g}, {_num(noise.counts_per_probe)} counts"]
    elif noise.model == "dose":
        parts = [f"dose {_num(noise.dose)} e-/pattern"]
    else:
        parts = ["none"] if not is_active(noise) else []
    if noise.read_noise > 0:
        parts.append(f"read noise {noise.read_noise:g} counts")
    if noise.hot_pixels > 0:
        parts.append(f"{100 * noise.hot_pixels:g} % hot pixels")
    return ", ".join(parts)


def add_noise_to_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    noise: NoiseConfig,
    seed: int,
    progress: Callable[[int], None] | None = None,
    dataset: str | None = None,
) -> Path:
    """Stream ``src`` (any readable format) into a new file ``dst`` (format from its extension) with noise added.

    Labels and attributes of ``src`` are kept; ``noise`` (JSON), ``noise_seed`` and ``source`` (file
    name) record what was added (an earlier ``noise`` attribute moves to ``source_noise``).
    ``progress(n)`` is called with the number of scan rows just written.
    """
    from edgestem.data.io import data_writer, open_4dstem

    src_p, dst_p = Path(src), Path(dst)
    if src_p.resolve() == dst_p.resolve():
        raise DataError(f"{dst_p}: output is the input file; write the noisy copy to a different path")
    with open_4dstem(src_p, dataset) as ds:
        attrs: dict[str, Any] = {k: v for k, v in ds.attrs.items() if k != "edgestem_version"}
        if "noise" in attrs:
            attrs["source_noise"] = attrs.pop("noise")
        attrs["noise"] = noise.model_dump(mode="json")
        attrs["noise_seed"] = int(seed)
        attrs["source"] = src_p.name
        if is_active(noise):
            attrs["units"] = _updated_units(attrs.get("units"), noise)
        qshape = ds.pattern_shape
        hot = hot_pixel_mask(qshape, noise.hot_pixels, seed) if noise.hot_pixels > 0 else None
        with data_writer(dst_p, ds.shape, attrs=attrs) as w:
            for rows, block in ds.iter_rows():
                out = np.empty(block.shape, dtype=np.float32)
                for i, r in enumerate(range(rows.start, rows.stop)):
                    out[i] = apply_noise(block[i], noise, noise_rng(seed, r), hot)
                w.write(rows, out)
                if progress is not None:
                    progress(rows.stop - rows.start)
            if ds.labels:
                w.set_labels(ds.labels)
    return dst_p


def _updated_units(units: Any, noise: NoiseConfig) -> Any:
    """The source's ``units`` attribute with its ``data`` entry set to the noisy data's units."""
    parsed = json_attr(units)
    if isinstance(parsed, dict):
        return {**parsed, "data": noise_units(noise, str(parsed.get("data", "as the source")))}
    return {"data": noise_units(noise, "as the source")}
