"""Strain maps from a model and the metrics of docs/science.md ("What is measured").

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


def score_patterns(
    model: Any, x: np.ndarray, bases: dict[str, np.ndarray], loss_cfg: Any, batch: int = 256
) -> tuple[np.ndarray, dict[str, float]]:
    """Affine maps (N, 2, 2) of inputs ``x`` and the mean loss against each base pattern set.

    The encoder reads ``x`` (e.g. noisy patterns); each base (e.g. the same patterns without noise)
    replaces what the loss compares with: ``warp(base, A)`` against the dictionary and
    ``warp(D, A^-1)`` against the base. A base equal to ``x`` gives the ordinary loss.
    """
    from dataclasses import replace

    from edgestem.model.ccstae import gaussian_blur, warp

    model.eval()
    A, sums = [], dict.fromkeys(bases, 0.0)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))
            out = model(xb)
            A.append(out.A.double().numpy())
            for name, base in bases.items():
                target = gaussian_blur(torch.from_numpy(np.ascontiguousarray(base[i : i + batch])), model.smooth_px)
                based = replace(out, target=target, aligned=warp(target, out.A, model.mode))
                sums[name] += float(model.loss(xb, based, loss_cfg)["total"]) * len(xb)
    return np.concatenate(A), {k: v / max(1, len(x)) for k, v in sums.items()}


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
    """MAE per component after subtracting each map's reference-region mean: strain in %, theta in deg.

    Positions where the prediction is NaN (a failed classical fit) are left out; count them apart.
    """
    shape = next(iter(pred.values())).shape
    mask = S.reference_mask(shape, reference) if len(shape) == 2 else np.ones(shape, bool)
    out = {}
    for k in COMPONENTS:
        ok = np.isfinite(pred[k])
        p = pred[k] - pred[k][mask & ok].mean()
        t = truth[k] - truth[k][mask & ok].mean()
        out[k] = float(np.mean(np.abs(p - t)[ok]) * (1.0 if k == "theta" else 100.0))
    return out


def regression_slope(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Least-squares slope of prediction on truth per component (1 = unbiased; < 1 = shrunk to zero)."""
    out = {}
    for k in COMPONENTS:
        ok = np.isfinite(pred[k].ravel())
        t = truth[k].ravel()[ok] - truth[k].ravel()[ok].mean()
        p = pred[k].ravel()[ok] - pred[k].ravel()[ok].mean()
        denom = float(t @ t)
        out[k] = float(p @ t / denom) if denom > 0 else float("nan")
    return out


def aligned_mean(raw: np.ndarray, A: np.ndarray, batch: int = 512) -> np.ndarray:
    """Mean of the patterns warped by their own affine maps: a sharp template in the encoder's frame."""
    from edgestem.model.ccstae import warp

    total = np.zeros(raw.shape[-2:], dtype=np.float64)
    with torch.no_grad():
        for i in range(0, len(raw), batch):
            xb = torch.from_numpy(np.ascontiguousarray(raw[i : i + batch], dtype=np.float32))[:, None]
            total += warp(xb, torch.from_numpy(A[i : i + batch]).float()).double().sum(dim=(0, 1)).numpy()
    return total / len(raw)


def refine_with_fallback(
    raw: np.ndarray, A: np.ndarray, steps: int = 12, progress: Any = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-pattern Poisson maximum-likelihood refinement started from the encoder's estimates.

    The encoder's maps are relative to its learned dictionary, so the refinement's template is built
    in that same frame (the patterns aligned by those maps, averaged); the maps are dimensionless,
    so they apply to the raw detector patterns as long as pre-processing only centre-crops and bins.
    When no 2D lattice can be found in that template (a poor encoder start blurs it; very low
    dose), the scan's plain mean pattern is tried; when that fails too, a one-line error says so.
    Returns the maps and :func:`edgestem.refine.refine`'s per-pattern ``info``.
    """
    from edgestem.errors import EdgestemError
    from edgestem.refine import refine_dataset

    reasons = []
    for name, template in (("the encoder-aligned mean", aligned_mean(raw, A)), ("the mean", None)):
        try:
            A_ref, info, _ = refine_dataset(raw, template, A, steps=steps, progress=progress)
            return A_ref, info
        except ValueError as exc:
            reasons.append(f"{name} pattern: {exc}")
    raise EdgestemError(
        "refinement impossible: no Bragg-disk lattice found in "
        + "; in ".join(reasons)
        + "; the patterns may be too noisy for a template (use the encoder's maps or edgestem baseline)"
    )


def refine_from_encoder(raw: np.ndarray, A: np.ndarray, progress: Any = None) -> np.ndarray:
    """The refined affine maps of :func:`refine_with_fallback` (N, 2, 2)."""
    return refine_with_fallback(raw, A, progress=progress)[0]


def write_maps(
    path: Any, maps: dict[str, np.ndarray], A: np.ndarray, attrs: dict[str, Any], calibration: Any = None
) -> None:
    """Strain maps file (HDF5, atomic): ``/maps/<component>`` (Rx, Ry), ``/affine`` (Rx, Ry, 2, 2).

    ``calibration`` (:func:`edgestem.data.io.calibration_of` of the input) is kept as an attribute
    and gives the EMD tree's scan axes their step and units.
    """
    import json

    import h5py

    from edgestem import __version__
    from edgestem.atomic import atomic_path
    from edgestem.data.io import add_emd_tree

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["edgestem_version"] = __version__
        for k, v in attrs.items():
            f.attrs[k] = v if isinstance(v, str | int | float) else json.dumps(v)
        g = f.create_group("maps")
        for k in COMPONENTS:
            g.create_dataset(k, data=np.asarray(maps[k], dtype=np.float64))
        g.attrs["units"] = json.dumps({"exx": "fraction", "eyy": "fraction", "exy": "fraction", "theta": "degree"})
        f.create_dataset("affine", data=np.asarray(A, dtype=np.float64))
        for k in COMPONENTS:
            g[k].attrs["units"] = "degree" if k == "theta" else "fraction"
        # also an EMD 1.0 file: emdfile / py4DSTEM read the maps as Arrays
        if calibration:
            f.attrs["calibration"] = json.dumps(calibration)
        add_emd_tree(
            f,
            {**{k: (g[k], ("Rx", "Ry")) for k in COMPONENTS}, "affine": (f["affine"], ("Rx", "Ry", "i", "j"))},
            calibration,
        )


def strain_from_run(
    run: Any,
    data: Any,
    out: Any,
    reference: str | None = None,
    refine: bool = False,
    dataset: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """``edgestem strain``: strain maps of a data file from a trained run, with metrics when labelled.

    Writes ``out`` (maps HDF5), ``<out>.json`` (metrics, speed, provenance) and ``<out>.png``.
    """
    import time
    from pathlib import Path

    from edgestem.rundir import open_stage

    t_start = time.perf_counter()
    out = Path(out)
    stage = open_stage(run)
    model, cfg = stage.model, stage.cfg
    d = stage.read(data, dataset, reference)
    notes = [n for n in [pattern_shape_note(stage.state, d.raw.shape[-2:], cfg)] if n]
    symmetry = stage.symmetry(d)
    t0 = time.perf_counter()
    A = predict_affine(model, d.x)
    encoder_seconds = time.perf_counter() - t0
    methods = {"encoder": A}
    timings = {"encoder": len(A) / max(encoder_seconds, 1e-9)}
    if refine:
        t0 = time.perf_counter()
        methods["refined"], info = refine_with_fallback(d.raw, A, progress=progress)
        timings["refined"] = len(A) / max(time.perf_counter() - t0, 1e-9)
    results: dict[str, Any] = {"patterns": len(A), "patterns_per_second": timings, "symmetry": symmetry}
    if refine:
        open_ = np.flatnonzero(~np.asarray(info["converged"], bool).ravel())
        results["refine"] = {"not_converged": int(len(open_)), "not_converged_first": open_[:20].tolist()}
    if notes:
        results["notes"] = notes
    maps = {name: maps_from_affine(Am, d.scan_shape, reference, symmetry) for name, Am in methods.items()}
    best = "refined" if refine else "encoder"
    return write_result(
        "strain",
        out,
        maps,
        {k: v.reshape(*d.scan_shape, 2, 2) for k, v in methods.items()},
        best,
        d.labels,
        reference,
        symmetry,
        results,
        inputs={"run": run, "data": data},
        config=cfg,
        started=t_start,
    )


def pattern_shape_note(state: dict[str, Any], shape: tuple[int, ...], cfg: Any) -> str | None:
    """One line when ``shape`` (the data's patterns) differs from the run's training patterns, else None.

    The pre-processing crops and bins any pattern to the model's size, so such data run without
    error; the user should still know their patterns were binned differently from training.
    """
    from edgestem.data.preprocess import geometry

    trained = state.get("data", {}).get("pattern_shape")
    if not trained or tuple(trained) == tuple(shape):
        return None
    g_now, g_then = geometry(tuple(shape), cfg.preprocess), geometry(tuple(trained), cfg.preprocess)
    return (
        f"patterns of {shape[0]}x{shape[1]} px (the run was trained on {trained[0]}x{trained[1]} px) are "
        f"cropped to {g_now.x1 - g_now.x0} px and binned {g_now.bin}x (training: {g_then.bin}x) to the model's "
        f"{cfg.preprocess.size} px"
    )


def compare_models(
    models: dict[str, Any],
    raw: np.ndarray,
    labels: dict[str, np.ndarray],
    scan_shape: tuple[int, int],
    cfg: Any,
    symmetry: str | None,
    levels: list[tuple[str, Any]] | None = None,
    reference: str | None = None,
) -> list[dict[str, Any]]:
    """Strain MAE of several models on the same patterns, optionally at several noise levels.

    ``raw``: patterns (N, Qx, Qy) as read (clean, when ``levels`` add noise); ``levels``: pairs
    (label, NoiseConfig) applied with a generator seeded from ``cfg.seed`` and the level's index, so
    every model sees the same noisy patterns (stream ``compare`` of :mod:`edgestem.seeds`); None = the
    patterns as they are. Every model goes
    through the one pre-processing and the one strain computation. Returns one row per (level,
    model) with the MAE per component (strain in %, theta in degrees).
    """
    from edgestem.data.noise import apply_noise
    from edgestem.data.preprocess import preprocess
    from edgestem.seeds import rng

    truth = label_maps(labels, reference, symmetry)
    rows = []
    for i, (label, noise) in enumerate(levels or [("as read", None)]):
        noisy = raw if noise is None else apply_noise(raw, noise, rng(cfg.seed, "compare", i))
        x = preprocess(noisy, cfg.preprocess)[:, None]
        for name, model in models.items():
            maps = maps_from_affine(predict_affine(model, x), scan_shape, reference, symmetry)
            rows.append({"noise": label, "model": name, **strain_mae(maps, truth, reference)})
    return rows


def reference_note(A: np.ndarray, reference: str | None, symmetry: str | None) -> str | None:
    """One line when the reference region holds several lattice orientations (grains), else None."""
    groups = S.reference_orientations(A, reference, symmetry)
    if len(groups) < 2:
        return None
    where = f"--ref {reference}" if reference else "the reference (the whole scan)"
    parts = ", ".join(
        f"{g['theta']:+.1f} deg ({100 * g['fraction']:.0f} %, e.g. at {g['at'][0]},{g['at'][1]})" for g in groups
    )
    big = max(groups, key=lambda g: g["fraction"])["at"]
    return (
        f"{where} spans {len(groups)} lattice orientations: {parts}; its median lattice belongs to none of them, "
        f"so strain and rotation are offset; give a region inside one grain or --ref grain:{big[0]},{big[1]}"
    )


def _calibration_of_file(path: Any) -> Any:
    """The calibration of a data file (None when it has none or cannot be opened without --dataset)."""
    if path is None:
        return None
    from edgestem.data.io import calibration_of, open_4dstem
    from edgestem.errors import EdgestemError

    try:
        with open_4dstem(path) as ds:
            return calibration_of(ds.attrs)
    except EdgestemError:
        return None


def write_result(
    stage: str,
    out: Any,
    maps: dict[str, dict[str, np.ndarray]],
    affine: dict[str, np.ndarray],
    best: str,
    labels: dict[str, np.ndarray],
    reference: str | None,
    symmetry: str | None,
    results: dict[str, Any],
    inputs: dict[str, Any],
    config: Any = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Write the maps of ``best`` (HDF5), ``<out>.json`` (metrics of every method) and ``<out>.png``.

    Shared by ``edgestem strain`` and ``edgestem baseline`` so both report the same way.
    """
    from pathlib import Path

    from edgestem.atomic import write_json
    from edgestem.report import plot_comparison, plot_maps
    from edgestem.runinfo import stage_report

    out = Path(out)
    note = reference_note(affine[best], reference, symmetry)
    if note:
        results.setdefault("notes", []).append(note)
    # "grain:x,y" once, from the mapped orientations, so labels and metrics use the same positions
    scored = S.resolve_reference(affine[best], reference, symmetry) if isinstance(reference, str) else reference
    truth = label_maps(labels, scored, symmetry) if set(COMPONENTS) <= set(labels) else None
    if truth is not None:
        for name, m in maps.items():
            results.setdefault("mae", {})[name] = strain_mae(m, truth, scored)
            results.setdefault("slope", {})[name] = regression_slope(m, truth)
    attrs = {"reference": reference or "all", "symmetry": symmetry or "none", "method": best}
    calibration = _calibration_of_file(inputs.get("data"))
    write_maps(
        out,
        maps[best],
        affine[best],
        {**{k: str(v) for k, v in inputs.items()}, **attrs},
        calibration=calibration,
    )
    png = out.with_suffix(".png")
    data_name = Path(str(inputs.get("data", out))).name
    shape = next(iter(maps[best].values())).shape
    figure = {"reference": S.reference_mask(shape, scored) if scored is not None else None, "calibration": calibration}
    if truth is not None:
        plot_comparison(maps[best], truth, png, title=f"{data_name}: {best} vs labels", **figure)
    else:
        plot_maps(maps[best], png, title=f"{data_name}: {best}", **figure)
    report = stage_report(
        stage, inputs=inputs, outputs={"maps": out, "figure": png}, config=config, metrics=results, started=started
    )
    write_json(out.with_name(out.name + ".json"), report)
    return results


def baseline_from_file(
    data: Any,
    out: Any,
    reference: str | None = None,
    dataset: str | None = None,
    symmetry: str = "auto",
    progress: Any = None,
) -> dict[str, Any]:
    """``edgestem baseline``: classical Bragg-disk strain maps of a data file, reported like ``strain``.

    ``symmetry``: ``"hex"``, ``"square"``, ``"none"`` or ``"auto"`` (from the file's attributes).
    """
    import time

    from edgestem.baseline import classical_strain
    from edgestem.config import load_config
    from edgestem.data.dataset import symmetry_of
    from edgestem.data.io import open_4dstem
    from edgestem.errors import EdgestemError

    t_start = time.perf_counter()
    with open_4dstem(data, dataset) as ds:
        try:
            S.reference_mask(ds.scan_shape, reference)
        except ValueError as exc:
            raise EdgestemError(str(exc)) from None
        # "auto": the file's lattice attributes, else classical_strain infers the symmetry from the data.
        sym = symmetry_of(ds.attrs, load_config(None, {"model.symmetry": symmetry}))
        res = classical_strain(ds, reference=reference, symmetry=sym, progress=progress)
        labels = dict(ds.labels)
    sym = {6: "hex", 4: "square"}.get(int(res.symmetry), int(res.symmetry))
    results: dict[str, Any] = {
        "patterns": int(res.n_disks.size),
        "patterns_per_second": {"classical": res.patterns_per_second},
        "symmetry": sym,
        "failed": int(res.failed),
        "median_disks": float(np.median(res.n_disks)),
    }
    return write_result(
        "baseline",
        out,
        {"classical": res.maps},
        {"classical": res.A},
        "classical",
        labels,
        reference,
        sym,
        results,
        inputs={"data": data},
        started=t_start,
    )
