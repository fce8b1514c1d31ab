"""Strain maps from a model and the metrics of SCIENCE.md section 6.

Predictions and labels both go through :func:`edgestem.strain.strain_from_affine` with the same
reference region, so they are compared in the same frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edgestem import strain as S

COMPONENTS = ("exx", "eyy", "exy", "theta")


def predict_affine(model: Any, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Affine maps (N, 2, 2) of pre-processed patterns (N, 1, H, W) through encoder + head."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model.affine(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).double().numpy())
    return np.concatenate(out)


def maps_from_affine(
    A: np.ndarray, scan_shape: tuple[int, int], reference: str | np.ndarray | None, symmetry: str | None
) -> dict[str, np.ndarray]:
    """Strain maps (Rx, Ry) per component from per-position affine maps."""
    return S.strain_from_affine(A.reshape(*scan_shape, 2, 2), reference=reference, symmetry=symmetry)


def label_maps(
    labels: dict[str, np.ndarray], reference: str | np.ndarray | None, symmetry: str | None
) -> dict[str, np.ndarray]:
    """The labels as the same math sees them: relative to the same reference, in the same frame."""
    F = S.deformation_gradient(labels["exx"], labels["eyy"], labels["exy"], labels["theta"])
    return S.strain_from_affine(S.affine_from_deformation(F), reference=reference, symmetry=symmetry)


def strain_mae(
    pred: dict[str, np.ndarray], truth: dict[str, np.ndarray], reference: str | np.ndarray | None = None
) -> dict[str, float]:
    """MAE per component after subtracting each map's reference-region mean: strain in %, theta in deg."""
    shape = next(iter(pred.values())).shape
    mask = S.reference_mask(shape, reference) if len(shape) == 2 else np.ones(shape, bool)
    out = {}
    for k in COMPONENTS:
        p = pred[k] - pred[k][mask].mean()
        t = truth[k] - truth[k][mask].mean()
        out[k] = float(np.mean(np.abs(p - t)) * (1.0 if k == "theta" else 100.0))
    return out


def regression_slope(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Least-squares slope of prediction on truth per component (1 = unbiased; < 1 = shrunk to zero)."""
    out = {}
    for k in COMPONENTS:
        t = truth[k].ravel() - truth[k].mean()
        p = pred[k].ravel() - pred[k].mean()
        denom = float(t @ t)
        out[k] = float(p @ t / denom) if denom > 0 else float("nan")
    return out


def write_maps(path: Any, maps: dict[str, np.ndarray], A: np.ndarray, attrs: dict[str, Any]) -> None:
    """Strain maps file (HDF5, atomic): ``/maps/<component>`` (Rx, Ry), ``/affine`` (Rx, Ry, 2, 2)."""
    import json

    import h5py

    from edgestem import __version__
    from edgestem.atomic import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["edgestem_version"] = __version__
        for k, v in attrs.items():
            f.attrs[k] = v if isinstance(v, str | int | float) else json.dumps(v)
        g = f.create_group("maps")
        for k in COMPONENTS:
            g.create_dataset(k, data=np.asarray(maps[k], dtype=np.float64))
        g.attrs["units"] = json.dumps({"exx": "fraction", "eyy": "fraction", "exy": "fraction", "theta": "degree"})
        f.create_dataset("affine", data=np.asarray(A, dtype=np.float64))


def strain_from_run(
    run: Any,
    data: Any,
    out: Any,
    reference: str | None = None,
    refine: bool = False,
    dataset: str | None = None,
) -> dict[str, Any]:
    """``edgestem strain``: strain maps of a data file from a trained run, with metrics when labelled.

    Writes ``out`` (maps HDF5), ``<out>.json`` (metrics, speed, provenance) and ``<out>.png``.
    """
    import time
    from pathlib import Path

    from edgestem.atomic import write_json
    from edgestem.errors import DataError, EdgestemError
    from edgestem.report import plot_comparison, plot_maps
    from edgestem.runinfo import stage_report
    from edgestem.train import load_checkpoint, load_data, model_from_checkpoint

    t_start = time.perf_counter()
    out = Path(out)
    state = load_checkpoint(run)
    model, cfg = model_from_checkpoint(state)
    d = load_data(data, cfg, dataset)
    size = cfg.preprocess.size
    if d.x.shape[-2:] != (size, size):
        raise DataError(f"{data}: patterns pre-process to {d.x.shape[-2:]}, the run was trained on {size}x{size}")
    try:
        S.reference_mask(d.scan_shape, reference)
    except ValueError as exc:
        raise EdgestemError(str(exc)) from None
    symmetry = state["symmetry"] if d.symmetry is None else d.symmetry
    t0 = time.perf_counter()
    A = predict_affine(model, d.x)
    encoder_seconds = time.perf_counter() - t0
    methods = {"encoder": A}
    timings = {"encoder": len(A) / max(encoder_seconds, 1e-9)}
    if refine:
        from edgestem.refine import build_template
        from edgestem.refine import refine as refine_patterns

        t0 = time.perf_counter()
        template = build_template(d.raw.reshape(-1, *d.raw.shape[-2:]).mean(axis=0))
        A_ref, _ = refine_patterns(d.raw, template, A)
        methods["refined"] = A_ref
        timings["refined"] = len(A) / max(time.perf_counter() - t0, 1e-9)
    results: dict[str, Any] = {"patterns": len(A), "patterns_per_second": timings, "symmetry": symmetry}
    truth = label_maps(d.labels, reference, symmetry) if set(COMPONENTS) <= set(d.labels) else None
    best = "refined" if refine else "encoder"
    for name, Am in methods.items():
        maps = maps_from_affine(Am, d.scan_shape, reference, symmetry)
        if truth is not None:
            results.setdefault("mae", {})[name] = strain_mae(maps, truth, reference)
            results.setdefault("slope", {})[name] = regression_slope(maps, truth)
        if name == best:
            best_maps, best_A = maps, Am
    write_maps(
        out,
        best_maps,
        best_A.reshape(*d.scan_shape, 2, 2),
        {
            "run": str(run),
            "data": str(data),
            "reference": reference or "all",
            "symmetry": symmetry or "none",
            "method": best,
        },
    )
    png = out.with_suffix(".png")
    if truth is not None:
        plot_comparison(best_maps, truth, png, title=f"{Path(data).name}: {best} vs labels")
    else:
        plot_maps(best_maps, png, title=f"{Path(data).name}: {best}")
    report = stage_report(
        "strain",
        inputs={"run": run, "data": data},
        outputs={"maps": out, "figure": png},
        config=cfg,
        metrics=results,
        started=t_start,
    )
    write_json(out.with_name(out.name + ".json"), report)
    return results
