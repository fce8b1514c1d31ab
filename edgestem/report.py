"""Figures and human-readable reports (matplotlib, imported lazily, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgestem.atomic import atomic_path

# Display names, units and scale factors of the strain maps (labels are stored as fractions/degrees).
MAP_STYLE = {
    "exx": ("$\\epsilon_{xx}$", "%", 100.0),
    "eyy": ("$\\epsilon_{yy}$", "%", 100.0),
    "exy": ("$\\epsilon_{xy}$", "%", 100.0),
    "theta": ("$\\theta$", "deg", 1.0),
}


# Strain: diverging about zero; rotation gets its own map so it is never read as a strain.
CMAPS = {"exx": "RdBu_r", "eyy": "RdBu_r", "exy": "RdBu_r", "theta": "PuOr_r"}


def _scan_extent(shape: tuple[int, ...], calibration: Any) -> tuple[Any, str, str]:
    """imshow extent and axis labels of a scan map: calibrated units when the data carry them."""
    if calibration:
        (sx, ux), (sy, uy) = ((calibration[i]["scale"], calibration[i]["units"]) for i in (0, 1))
        if ux != "pixels" or uy != "pixels":
            return (-0.5 * sy, (shape[1] - 0.5) * sy, (shape[0] - 0.5) * sx, -0.5 * sx), f"Ry ({uy})", f"Rx ({ux})"
    return None, "Ry", "Rx"


def _show_map(
    fig: Any, ax: Any, img: np.ndarray, key: str, lim: float, calibration: Any = None, reference: Any = None
) -> None:
    """One scan map: its colour map, symmetric limits, colour bar, calibrated axes, reference outlined."""
    extent, xlabel, ylabel = _scan_extent(img.shape, calibration)
    im = ax.imshow(img, cmap=CMAPS.get(key, "RdBu_r"), vmin=-lim, vmax=lim, interpolation="nearest", extent=extent)
    if reference is not None and not np.all(reference):
        # contour through pixel centres, in the same coordinates as the image
        (sx, sy) = (1.0, 1.0) if extent is None else (calibration[0]["scale"], calibration[1]["scale"])
        rows, cols = np.arange(img.shape[0]) * sx, np.arange(img.shape[1]) * sy
        ax.contour(cols, rows, np.asarray(reference, dtype=float), levels=[0.5], colors="k", linewidths=0.8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Save a figure atomically as PNG and close it."""
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_patterns(mean_pattern: np.ndarray, patterns: dict[str, np.ndarray], path: Path) -> Path:
    """The mean pattern and a few single patterns, log-scaled, in one row.

    Axes follow the data: Qx (axis 0) runs down the image, Qy (axis 1) to the right.
    """
    plt = _pyplot()
    items = [("mean pattern", mean_pattern), *patterns.items()]
    fig, axes = plt.subplots(1, len(items), figsize=(3.0 * len(items), 3.2), squeeze=False)
    for ax, (title, img) in zip(axes[0], items, strict=True):
        img = np.asarray(img, dtype=np.float64)
        floor = max(img.max() * 1e-4, np.finfo(float).tiny)
        im = ax.imshow(np.log10(np.maximum(img, floor)), cmap="inferno", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("Qy (px)", fontsize=8)
        ax.set_ylabel("Qx (px)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("log10 intensity", fontsize=9)
    return save_figure(fig, path)


def plot_maps(
    maps: dict[str, np.ndarray], path: Path, title: str = "", *, reference: Any = None, calibration: Any = None
) -> Path:
    """Strain and rotation maps side by side, diverging colour maps symmetric about zero.

    ``reference``: boolean mask of the reference region, outlined; ``calibration``
    (:func:`edgestem.data.io.calibration_of`): scan axes in its units instead of positions.
    """
    plt = _pyplot()
    keys = [k for k in MAP_STYLE if k in maps]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.5 * len(keys), 3.0), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys, strict=True):
        name, unit, factor = MAP_STYLE[key]
        m = np.asarray(maps[key], dtype=np.float64) * factor
        lim = float(np.nanmax(np.abs(m))) or 1.0
        _show_map(fig, ax, m, key, lim, calibration, reference)
        ax.set_title(f"{name} ({unit})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_dataset(
    file: str | Path, out_dir: str | Path, dataset: str | None = None, progress: bool = True
) -> list[Path]:
    """Figures of a data file: ``patterns.png`` (mean + four patterns), ``labels.png`` when labelled.

    Also writes ``plot.json`` (stage report with the data summary).
    """
    import time

    from edgestem.atomic import write_json
    from edgestem.data.io import open_4dstem
    from edgestem.data.summary import summarize
    from edgestem.progress import progress_bar
    from edgestem.runinfo import stage_report

    t0 = time.perf_counter()
    out = Path(out_dir)
    written: list[Path] = []
    with open_4dstem(file, dataset) as ds:
        with progress_bar("reading", ds.shape[0], enabled=progress) as advance:
            summary = summarize(ds, progress=advance)
        rx, ry = ds.scan_shape
        picks = {(0, 0), (rx // 2, ry // 2), (rx - 1, ry - 1), (rx // 4, 3 * ry // 4)}
        patterns = {f"({i}, {j})": ds.pattern(i, j) for i, j in sorted(picks)}
        written.append(plot_patterns(summary.mean_pattern, patterns, out / "patterns.png"))
        if ds.labels:
            written.append(plot_maps(ds.labels, out / "labels.png", title=f"labels of {Path(file).name}"))
    written.append(
        write_json(
            out / "plot.json",
            stage_report(
                "plot",
                inputs={"data": file},
                outputs={"figures": [str(p) for p in written]},
                metrics=summary.as_dict(),
                started=t0,
            ),
        )
    )
    return written


def plot_comparison(
    pred: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    path: Path,
    title: str = "",
    *,
    reference: Any = None,
    calibration: Any = None,
) -> Path:
    """Predicted maps, labels and their difference: one column per component, shared colour scales.

    The scale of a column covers both prediction and label (99th percentile of either), so neither
    saturates; ``reference`` and ``calibration`` as in :func:`plot_maps`.
    """
    plt = _pyplot()
    keys = [k for k in MAP_STYLE if k in pred and k in truth]
    fig, axes = plt.subplots(3, len(keys), figsize=(3.4 * len(keys), 8.4), squeeze=False, layout="constrained")
    for j, key in enumerate(keys):
        name, unit, factor = MAP_STYLE[key]
        p = (pred[key] - np.nanmean(pred[key])) * factor
        t = (truth[key] - np.nanmean(truth[key])) * factor
        lim = max(float(np.nanpercentile(np.abs(t), 99)), float(np.nanpercentile(np.abs(p), 99))) or 1.0
        err = p - t
        elim = float(np.nanpercentile(np.abs(err), 99)) or lim  # the error's own scale shows its structure
        for i, (img, label, lm) in enumerate(((p, "prediction", lim), (t, "label", lim), (err, "error", elim))):
            _show_map(fig, axes[i][j], img, key, lm, calibration, reference)
            axes[i][j].set_title(f"{name} {label} ({unit})", fontsize=9)
    if title:
        fig.suptitle(title + " (each map minus its mean)", fontsize=10)
    return save_figure(fig, path)


def plot_grid(
    panels: dict[str, tuple[np.ndarray, np.ndarray]],
    rows: list[str],
    cols: list[str],
    path: Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Heatmaps, one panel per metric: ``panels[name] = (mean, std)`` of shape (rows, cols), NaN = missing.

    Colours on a log scale (errors span decades; dark = small), each cell annotated ``mean`` and
    ``+-std`` (no colour bar: the numbers are in the cells).
    """
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    n = len(panels)
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=((0.9 * len(cols) + 1.6) * ncols, (0.55 * len(rows) + 1.4) * nrows),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (name, (mean, std)) in zip(axes.flat, panels.items(), strict=False):
        mean = np.asarray(mean, dtype=np.float64)
        ok = np.isfinite(mean) & (mean > 0)
        norm = LogNorm(vmin=mean[ok].min(), vmax=max(mean[ok].max(), mean[ok].min() * 1.01)) if ok.any() else None
        ax.imshow(np.where(ok, mean, np.nan), cmap="viridis", norm=norm, aspect="auto")
        for i in range(mean.shape[0]):
            for j in range(mean.shape[1]):
                if not np.isfinite(mean[i, j]):
                    continue
                text = f"{mean[i, j]:.3g}" + (f"\n+-{std[i, j]:.2g}" if np.isfinite(std[i, j]) else "")
                dark = norm is not None and ok[i, j] and norm(mean[i, j]) < 0.5
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_curves(
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    path: Path,
    xlabel: str,
    log_x: bool = False,
    title: str = "",
) -> Path:
    """Error vs a noise level, one panel per metric: ``panels[name][line] = (x, mean, std)`` (error bars).

    A line named ``classical`` is drawn dashed in black (a reference method, not a training level).
    """
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False, layout="constrained")
    for ax, (name, lines) in zip(axes[0], panels.items(), strict=True):
        for k, (label, (x, mean, std)) in enumerate(lines.items()):
            style = {"color": "k", "ls": "--"} if label == "classical" else {"color": f"C{k}", "ls": "-"}
            ax.errorbar(x, mean, yerr=std, marker="o", ms=3, capsize=3, label=label, **style)
        if log_x:
            ax.set_xscale("log")
            ax.invert_xaxis()  # dose falls to the right: noise grows left to right on both axes
        ax.set_yscale("log")
        # Plain tick labels: the default mathtext ones (10^-1) cost seconds per figure to lay out.
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    fullest = max(range(n), key=lambda k: len(list(panels.values())[k]))  # its lines name every row
    handles, labels = axes[0][fullest].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="trained at", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
