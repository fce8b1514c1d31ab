"""One streaming pass over a dataset: the statistics ``edgestem info`` prints and ``plot`` draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgestem.data.io import Dataset4D


@dataclass
class Summary:
    """Shape, value range and per-pattern totals of a dataset, plus its mean pattern."""

    shape: tuple[int, int, int, int]
    dtype: str
    vmin: float
    vmax: float
    mean: float
    total_mean: float
    total_min: float
    total_max: float
    mean_pattern: np.ndarray = field(repr=False)
    labels: dict[str, dict[str, float]]
    attrs: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dims": ["Rx", "Ry", "Qx", "Qy"],
            "dtype": self.dtype,
            "min": self.vmin,
            "max": self.vmax,
            "mean": self.mean,
            "counts_per_pattern": {"mean": self.total_mean, "min": self.total_min, "max": self.total_max},
            "labels": self.labels,
            "attrs": self.attrs,
        }


def summarize(ds: Dataset4D, progress: Any = None) -> Summary:
    """Stream the whole dataset once (validating NaN/negative values) and collect its statistics."""
    vmin, vmax, total = np.inf, -np.inf, 0.0
    tmin, tmax = np.inf, -np.inf
    acc = np.zeros(ds.pattern_shape, dtype=np.float64)
    for sl, block in ds.iter_rows():
        b = block.astype(np.float64, copy=False)
        vmin, vmax = min(vmin, float(b.min())), max(vmax, float(b.max()))
        totals = b.sum(axis=(-2, -1))
        total += float(totals.sum())
        tmin, tmax = min(tmin, float(totals.min())), max(tmax, float(totals.max()))
        acc += b.sum(axis=(0, 1))
        if progress is not None:
            progress(sl.stop - sl.start)
    n = ds.shape[0] * ds.shape[1]
    labels = {
        k: {
            "min": float(np.min(v)),
            "max": float(np.max(v)),
            "mean": float(np.mean(v)),
            "std": float(np.std(v)),
        }
        for k, v in ds.labels.items()
    }
    return Summary(
        shape=ds.shape,
        dtype=str(ds.dtype),
        vmin=vmin,
        vmax=vmax,
        mean=total / (n * ds.shape[2] * ds.shape[3]),
        total_mean=total / n,
        total_min=tmin,
        total_max=tmax,
        mean_pattern=acc / n,
        labels=labels,
        attrs=dict(ds.attrs),
    )
