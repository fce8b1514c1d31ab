"""A data file read for a model: every pattern, validated, through the ONE pre-processing.

Training, QAT, pruning, strain maps, emulation and the reports all read their data through
:func:`load_data`, so a model always sees its patterns prepared the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.config import Config
from edgestem.data.io import json_attr, open_4dstem
from edgestem.data.preprocess import preprocess


@dataclass
class TrainingData:
    """Raw patterns (for noise augmentation), model inputs, labels and provenance of a data file."""

    raw: np.ndarray  # (N, Qx, Qy) float32, as read
    x: np.ndarray  # (N, 1, H, W) float32, pre-processed
    scan_shape: tuple[int, int]
    labels: dict[str, np.ndarray]
    symmetry: str | None
    fingerprint: str
    path: Path


def symmetry_of(attrs: dict[str, Any], cfg: Config) -> str | None:
    """Lattice symmetry: the config's, or (``auto``) the data file's simulator attributes, else None."""
    if cfg.model.symmetry != "auto":
        return None if cfg.model.symmetry == "none" else cfg.model.symmetry
    lat = json_attr(attrs.get("lattice"))
    if isinstance(lat, dict):
        return {6: "hex", 4: "square"}.get(lat.get("symmetry")) or (
            lat.get("kind") if lat.get("kind") in ("hex", "square") else None
        )
    return None


def load_data(path: str | Path, cfg: Config, dataset: str | None = None) -> TrainingData:
    """Read every pattern of a file, validate it, and pre-process it with the one function."""
    path = Path(path)
    with open_4dstem(path, dataset) as ds:
        blocks = [block for _, block in ds.iter_rows()]
        raw = np.concatenate(blocks).reshape(-1, *ds.pattern_shape).astype(np.float32, copy=False)
        h = hashlib.sha256()
        h.update(np.asarray(ds.shape).tobytes())
        h.update(raw[:: max(1, len(raw) // 16)].tobytes())
        return TrainingData(
            raw=raw,
            x=preprocess(raw, cfg.preprocess)[:, None],
            scan_shape=ds.scan_shape,
            labels=dict(ds.labels),
            symmetry=symmetry_of(ds.attrs, cfg),
            fingerprint=h.hexdigest()[:16],
            path=path,
        )


__all__ = ["TrainingData", "load_data", "symmetry_of"]
