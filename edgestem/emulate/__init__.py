"""Bit-accurate emulation: every way of running the encoder behind one interface.

A backend turns pre-processed patterns ``(N, 1, H, W)`` float32 into the encoder's four raw outputs
``(N, 4)``; everything before (reading, noise, the one pre-processing) and after (the bounded head,
the one strain computation, metrics) is shared, so backends differ only in how the encoder runs.
Backends are registered by name in :data:`edgestem.registry.EMULATORS`; each module defines one
``Backend`` class. Adding a backend is one file and one line in that registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgestem.errors import EdgestemError
from edgestem.registry import EMULATORS


class Backend(Protocol):
    """One way of running the encoder of a run directory."""

    name: str
    exact: bool  # must equal the Brevitas reference bit for bit (else: report differences only)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw encoder outputs (N, 4) float64 of pre-processed patterns (N, 1, H, W) float32."""
        ...


def backend_names() -> list[str]:
    return EMULATORS.names()


def get_backend(name: str, run: str | Path, **options: Any) -> Backend:
    """Instantiate backend ``name`` for ``run`` (unknown names, missing artifacts or tools: one-line errors)."""
    return EMULATORS.get(name, "--backend")(Path(run), **options)


def quantized_dir(run: str | Path) -> Path:
    """The quantized model of a run: the one ``edgestem export`` exports (RUN/prune if quantized, else RUN/qat)."""
    from edgestem.export.qonnx import find_source

    return find_source(run)[1]


def first_mismatch(got: np.ndarray, ref: np.ndarray) -> tuple[int, int] | None:
    """(pattern, output) of the first element where two output arrays differ; None when equal."""
    diff = np.argwhere(got != ref)
    return None if len(diff) == 0 else (int(diff[0][0]), int(diff[0][1]))


class EmulationMismatch(EdgestemError):
    """A backend that must be bit-exact differs from the Brevitas reference (exit code 1)."""

    exit_code = 1


def check_against_reference(backend: Backend, run: str | Path, x: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Compare ``got`` (the backend's outputs on ``x``) with the Brevitas reference on the same ``x``.

    Exact backends raise :class:`EmulationMismatch` naming the first differing pattern and value;
    the others return the count and size of their differences (e.g. FINN's one-LSB tie rounding).
    """
    ref = get_backend("brevitas", run).predict(x)
    where = first_mismatch(got, ref)
    n_bad = int((got != ref).any(axis=1).sum())
    result = {
        "reference": "brevitas",
        "patterns": len(x),
        "mismatching_patterns": n_bad,
        "max_abs_diff": float(np.abs(got - ref).max()) if len(x) else 0.0,
        "exact_required": backend.exact,
    }
    if where is not None and backend.exact:
        i, k = where
        raise EmulationMismatch(
            f"{backend.name} differs from brevitas on {n_bad} of {len(x)} patterns; first: pattern {i}, "
            f"output {k}: {got[i, k]!r} vs {ref[i, k]!r}"
        )
    return result


def emulate(
    run: str | Path,
    backend: str,
    data: str | Path,
    out: str | Path,
    *,
    noise: Any = None,
    check: bool = False,
    reference: str | None = None,
    dataset: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``edgestem emulate``: strain maps of ``data`` through one backend, written like ``edgestem strain``.

    ``noise`` (a NoiseConfig) is drawn on the patterns first, seeded from the run's config (stream
    ``emulate`` of :mod:`edgestem.seeds`). With
    ``check`` the raw outputs are compared with the Brevitas reference (see
    :func:`check_against_reference`); a bit-exact backend that differs writes nothing and raises.
    """
    import time

    import torch

    from edgestem.data.noise import apply_noise
    from edgestem.data.preprocess import preprocess
    from edgestem.evaluate import maps_from_affine, pattern_shape_note, write_result
    from edgestem.rundir import open_stage
    from edgestem.seeds import rng

    started = time.perf_counter()
    stage = open_stage(run)
    model, cfg = stage.model, stage.cfg
    be = get_backend(backend, run, **(options or {}))
    d = stage.read(data, dataset, reference)
    x = d.x
    if noise is not None:
        x = preprocess(apply_noise(d.raw, noise, rng(cfg.seed, "emulate")), cfg.preprocess)[:, None]
    t0 = time.perf_counter()
    raw = be.predict(np.ascontiguousarray(x, dtype=np.float32))
    seconds = time.perf_counter() - t0
    results: dict[str, Any] = {
        "backend": backend,
        "patterns": len(raw),
        "patterns_per_second": {backend: len(raw) / max(seconds, 1e-9)},
        "noise": None if noise is None else noise.model_dump(mode="json"),
    }
    note = pattern_shape_note(stage.state, d.raw.shape[-2:], cfg)
    if note:
        results["notes"] = [note]
    if check:
        results["check"] = check_against_reference(be, run, x, raw)
    with torch.no_grad():
        A = model.head(torch.from_numpy(raw)).numpy()
    symmetry = stage.symmetry(d)
    maps = {backend: maps_from_affine(A, d.scan_shape, reference, symmetry)}
    return write_result(
        "emulate",
        out,
        maps,
        {backend: A.reshape(*d.scan_shape, 2, 2)},
        backend,
        d.labels,
        reference,
        symmetry,
        results,
        inputs={"run": run, "data": data, "backend": backend},
        config=cfg,
        started=started,
    )


__all__ = [
    "EmulationMismatch",
    "check_against_reference",
    "emulate",
    "Backend",
    "backend_names",
    "first_mismatch",
    "get_backend",
    "quantized_dir",
]
