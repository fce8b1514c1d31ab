"""Train-noise x test-noise robustness grid (docs/robustness.md): ``edgestem robustness``.

For every training row (one noise level, or the mixed row that draws a level per batch) and every
seed, the CC-ST-AE trains without labels on the clean simulated scan with fresh noise on every
batch (``train.augment``). The trained model then maps every test column (one seeded noise draw
of the scan at that level) and is scored against two bases, as in the robustness poster:

* ``noise-free``: the same patterns without noise, and their labels. The loss compares the
  model's alignment of the noisy input with the clean patterns; strain and rotation errors are
  the MAE against the labels (what the clean patterns encode).
* ``same-noise``: the noisy test patterns themselves. The loss is the ordinary loss on them;
  strain and rotation errors are the MAE against the classical Bragg-disk fit of the same noisy
  patterns (the reference a user has without labels).

The classical fit is also scored against the labels in every test column (row ``classical``).

A study directory holds::

    study.yaml                  the resolved config (``--resume`` must be given the same)
    data/clean.h5               the noise-free scan with labels; data/test-<level>.h5 per column
    classical/test-<level>.h5   the classical fit of each column (+ .json, .png)
    runs/<row>-seed<s>/         one training run per cell (checkpointed every epoch)
    cells/<row>-seed<s>.json    a finished cell: its scores, or its error
    results.csv, results.json   the tidy table (results.parquet too when pyarrow is installed)
    figures/                    heatmap-<base>.png, curves-<base>.png
    robustness.json             the stage report: cells, mean/std grids, the findings
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.config import AugmentConfig, Config, NoiseConfig, RobustnessConfig, load_config
from edgestem.errors import ConfigError, EdgestemError
from edgestem.seeds import level_seed

METRICS = ("loss", "exx", "eyy", "exy", "theta")
UNITS = {"loss": "", "exx": "%", "eyy": "%", "exy": "%", "theta": "deg"}
BASES = ("noise-free", "same-noise")
COLUMNS = ("axis", "method", "train", "test", "seed", "base", "metric", "unit", "value", "status", "error")
STRAIN = ("exx", "eyy", "exy")
# The config sections a study's numbers depend on (a resumed study must match them; qat:,
# export settings and the like may change in between).
STUDY_SECTIONS = ("seed", "simulate", "preprocess", "model", "loss", "train", "robustness")


def study_fields(cfg: Config, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The parts of ``cfg`` a study's results depend on, as JSON-able data."""
    return cfg.model_dump(mode="json", include={*STUDY_SECTIONS, *extra})


def level_name(level: float) -> str:
    """How a noise level is written in names and tables: 0.25, 1000, 1e+05."""
    return f"{level:g}"


def noise_for(rc: RobustnessConfig, level: float) -> NoiseConfig:
    """The noise model of one level on the study's axis."""
    from edgestem.data.noise import noise_at

    return noise_at(rc.axis, level, rc.counts_per_probe)


def check_levels(rc: RobustnessConfig) -> None:
    """Levels that the axis can take (w in [0, 1], dose > 0), test levels without repeats."""
    for v in [*rc.train_levels, *rc.mixed, *rc.test_levels]:
        if rc.axis == "background" and not 0 <= v <= 1:
            raise ConfigError(f"robustness: background weight {v:g} is outside [0, 1]")
        if rc.axis == "dose" and v <= 0:
            raise ConfigError(f"robustness: dose {v:g} must be > 0 electrons per pattern")
    if len(set(rc.test_levels)) != len(rc.test_levels):
        raise ConfigError("robustness.test_levels repeats a level; give each test column once")


def training_rows(rc: RobustnessConfig) -> list[tuple[str, list[float]]]:
    """Grid rows: (name, levels drawn per batch); one per training level, then ``mixed``."""
    rows = [(level_name(v), [float(v)]) for v in rc.train_levels]
    if rc.mixed:
        rows.append(("mixed", [float(v) for v in rc.mixed]))
    return rows


def cell_config(cfg: Config, levels: list[float], seed: int) -> Config:
    """The training config of one cell: the study's, with its seed and noise augmentation."""
    rc = cfg.robustness
    aug = AugmentConfig(model=rc.axis, levels=levels, counts_per_probe=rc.counts_per_probe)
    return cfg.model_copy(update={"seed": seed, "train": cfg.train.model_copy(update={"augment": aug})})


@dataclass
class TestColumn:
    """One test noise level: its file, pre-processed patterns and the classical fit's maps."""

    level: float
    path: Path
    x: np.ndarray
    classical: dict[str, np.ndarray] | None = None


@dataclass
class StudyData:
    """The training scan and the test columns, with the labels as the strain math sees them."""

    clean: Path  # training scan (noise-free)
    test_clean: Path  # the test columns' scan without noise (the noise-free base)
    clean_x: np.ndarray  # its pre-processed patterns
    truth: dict[str, np.ndarray]  # label maps relative to the reference region
    scan_shape: tuple[int, int]
    symmetry: str | None
    columns: list[TestColumn]


def prepare_data(cfg: Config, folder: Path, log: Callable[[str], None] = print) -> StudyData:
    """Simulate the clean scan(s) and one seeded noise draw per test level (files are reused)."""
    from edgestem.data.dataset import load_data
    from edgestem.data.noise import add_noise_to_file
    from edgestem.data.simulate import simulate_to_file
    from edgestem.evaluate import label_maps

    rc = cfg.robustness
    quiet = cfg.model_copy(update={"noise": NoiseConfig()})
    clean = folder / "clean.h5"
    if not clean.is_file():
        log(f"simulating {clean} ({cfg.simulate.scan[0]}x{cfg.simulate.scan[1]} patterns)")
        simulate_to_file(quiet, clean)
    test_clean = clean
    if rc.test_scan_seed is not None:
        test_clean = folder / "test-clean.h5"
        if not test_clean.is_file():
            simulate_to_file(quiet.model_copy(update={"seed": rc.test_scan_seed}), test_clean)
    base = load_data(test_clean, cfg)
    columns = []
    for level in rc.test_levels:
        path = folder / f"test-{level_name(level)}.h5"
        if not path.is_file():
            add_noise_to_file(test_clean, path, noise_for(rc, level), seed=level_seed(cfg.seed, level))
        columns.append(TestColumn(float(level), path, load_data(path, cfg).x))
    return StudyData(
        clean=clean,
        test_clean=test_clean,
        clean_x=base.x,
        truth=label_maps(base.labels, rc.reference, base.symmetry),
        scan_shape=base.scan_shape,
        symmetry=base.symmetry,
        columns=columns,
    )


def _read_maps(path: Path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f["maps"][k][()] for k in f["maps"]}


def classical_columns(data: StudyData, folder: Path, reference: str | None) -> list[dict[str, Any]]:
    """The classical fit of every test column (cached in ``folder``); returns its scores or error."""
    from edgestem.evaluate import baseline_from_file

    scores = []
    for col in data.columns:
        out = folder / f"test-{level_name(col.level)}.h5"
        report = out.with_name(out.name + ".json")
        try:
            if not report.is_file():
                baseline_from_file(col.path, out, reference=reference)
            metrics = json.loads(report.read_text())["metrics"]
            col.classical = _read_maps(out)
            scores.append({"test": col.level, "mae": metrics["mae"]["classical"], "failed": metrics["failed"]})
        except Exception as exc:  # noqa: BLE001 - recorded; the same-noise strain base is then missing
            scores.append({"test": col.level, "error": f"{type(exc).__name__}: {exc}"})
    return scores


def score_model(model: Any, cfg: Config, data: StudyData, reference: str | None) -> list[dict[str, Any]]:
    """Loss, strain and rotation errors of a model in every test column, against both bases."""
    from edgestem.evaluate import maps_from_affine, score_patterns, strain_mae

    scores = []
    for col in data.columns:
        A, loss = score_patterns(model, col.x, {"noise-free": data.clean_x, "same-noise": col.x}, cfg.loss)
        maps = maps_from_affine(A, data.scan_shape, reference, data.symmetry)
        values = {"noise-free": {"loss": loss["noise-free"], **strain_mae(maps, data.truth, reference)}}
        values["same-noise"] = {"loss": loss["same-noise"]}
        if col.classical is not None:
            # The classical maps are the reference: strain_mae leaves out positions where its first
            # argument is NaN (failed fits), and |a - b| is symmetric.
            values["same-noise"].update(strain_mae(col.classical, maps, reference))
        for base in BASES:
            for metric in METRICS:
                scores.append(
                    {"test": col.level, "base": base, "metric": metric, "value": values[base].get(metric, math.nan)}
                )
    return scores


def run_cell(cfg: Config, name: str, levels: list[float], seed: int, data: StudyData, out: Path) -> dict[str, Any]:
    """Train one cell (resuming its checkpoint if there is one) and score it; never raises on failure."""
    from edgestem.rundir import has_checkpoint, load_checkpoint, model_from_checkpoint
    from edgestem.train import train

    t0 = time.perf_counter()
    run = out / "runs" / f"{name}-seed{seed}"
    cell: dict[str, Any] = {"train": name, "levels": levels, "seed": seed, "run": str(run)}
    try:
        report = train(cell_config(cfg, levels, seed), data.clean, run, resume=has_checkpoint(run))
        last = report["history"][-1]
        cell.update(train_loss=last.get("train_total"), val_loss=last.get("val_total"))
        model, mcfg = model_from_checkpoint(load_checkpoint(run))
        cell["scores"] = score_model(model, mcfg, data, cfg.robustness.reference)
        cell.update(status="ok", error=None)
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded with its error; the study goes on
        cell.update(status="failed", error=f"{type(exc).__name__}: {exc}", scores=[])
    cell["seconds"] = round(time.perf_counter() - t0, 1)
    return cell


def tidy_rows(cfg: Config, cells: list[dict[str, Any]], classical: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, train, test, seed, base, metric); failed cells give rows without a value."""
    rc = cfg.robustness
    rows: list[dict[str, Any]] = []

    def add(method: str, train: str, test: float, seed: int | None, base: str, metric: str, value: Any, error: Any):
        ok = error is None and value is not None and math.isfinite(value)
        rows.append(
            dict(
                zip(
                    COLUMNS,
                    (rc.axis, method, train, test, seed, base, metric, UNITS[metric])
                    + (float(value) if ok else None, "ok" if error is None else "failed", error),
                    strict=True,
                )
            )
        )

    for cell in cells:
        scores = cell["scores"] or [
            {"test": t, "base": b, "metric": m, "value": None} for t in rc.test_levels for b in BASES for m in METRICS
        ]
        for s in scores:
            add("ccstae", cell["train"], s["test"], cell["seed"], s["base"], s["metric"], s["value"], cell["error"])
    for col in classical:
        for metric in METRICS[1:]:
            value = col["mae"][metric] if "mae" in col else None
            add("classical", "classical", col["test"], None, "noise-free", metric, value, col.get("error"))
    return rows


def grids(cfg: Config, rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean and standard deviation over seeds: ``grids[base][metric] = {rows, cols, mean, std, n}``.

    Every metric of a base has the same rows: the training rows (and ``classical``) with any value.
    """
    rc = cfg.robustness
    names = [n for n, _ in training_rows(rc)] + ["classical"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for base in BASES:
        stats = {}
        for metric in METRICS:
            values: dict[tuple[int, int], list[float]] = {}
            for r in rows:
                if r["base"] == base and r["metric"] == metric and r["value"] is not None:
                    values.setdefault((names.index(r["train"]), rc.test_levels.index(r["test"])), []).append(r["value"])
            mean = np.full((len(names), len(rc.test_levels)), np.nan)
            std, n = mean.copy(), np.zeros(mean.shape, int)
            for (i, j), v in values.items():
                mean[i, j], n[i, j] = np.mean(v), len(v)
                std[i, j] = np.std(v, ddof=1) if len(v) > 1 else np.nan
            stats[metric] = (mean, std, n)
        keep = [i for i in range(len(names)) if any(stats[m][2][i].any() for m in METRICS)]
        out[base] = {
            m: {
                "rows": [names[i] for i in keep],
                "cols": [level_name(v) for v in rc.test_levels],
                "mean": mean[keep],
                "std": std[keep],
                "n": n[keep],
            }
            for m, (mean, std, n) in stats.items()
        }
    return out


def findings(cfg: Config, g: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The poster's questions, answered from the noise-free-base strain MAE (mean of exx, eyy, exy)."""
    rc = cfg.robustness
    nf = g["noise-free"]
    rows, cols = nf["exx"]["rows"], nf["exx"]["cols"]
    strain = np.mean([nf[k]["mean"] for k in STRAIN], axis=0)
    single = [i for i, r in enumerate(rows) if r not in ("mixed", "classical")]
    out: dict[str, Any] = {"metric": "mean strain MAE (exx, eyy, exy; %) against the labels"}
    if not single:
        return out
    best = np.nanmin(strain[single], axis=0)
    out["best_row"] = {
        c: rows[single[int(np.nanargmin(strain[single, j]))]] for j, c in enumerate(cols) if np.isfinite(best[j])
    }
    # The least noise is the smallest w or the largest dose; the strongest test noise the opposite.
    least = level_name(min(rc.train_levels) if rc.axis == "background" else max(rc.train_levels))
    j = int(np.argmax(rc.test_levels) if rc.axis == "background" else np.argmin(rc.test_levels))
    if least in rows and np.isfinite(best[j]):
        out["least_noise_training"] = {
            "row": least,
            "strongest_test": cols[j],
            "strain_mae": round(float(strain[rows.index(least), j]), 4),
            "best_row": out["best_row"][cols[j]],
            "best_strain_mae": round(float(best[j]), 4),
        }
    if "mixed" in rows:
        m = strain[rows.index("mixed")]
        out["mixed_minus_best_single"] = {c: round(float(m[k] - best[k]), 4) for k, c in enumerate(cols)}
        out["mixed_beats_every_single_level"] = bool(np.all(m < best))
    return out


def grid_markdown(g: dict[str, Any], fmt: str = "{:.3f}") -> str:
    """A Markdown table of one grid: rows = training rows, columns = test levels, mean +- std."""
    lines = ["| trained at | " + " | ".join(g["cols"]) + " |", "|---|" + "---|" * len(g["cols"])]
    for i, name in enumerate(g["rows"]):
        cells = []
        for j in range(len(g["cols"])):
            m, s = g["mean"][i, j], g["std"][i, j]
            cells.append(
                "" if not np.isfinite(m) else fmt.format(m) + (f" +- {fmt.format(s)}" if np.isfinite(s) else "")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The tidy table as CSV and JSON (a list of records), and Parquet when pyarrow is installed."""
    import csv
    import io

    from edgestem.atomic import atomic_path, write_json, write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    written = [write_text(out / "results.csv", buf.getvalue()), write_json(out / "results.json", rows)]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    with atomic_path(out / "results.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return [*written, out / "results.parquet"]


def figures(cfg: Config, g: dict[str, dict[str, dict[str, Any]]], folder: Path) -> list[Path]:
    """Heatmaps of the grid and error-vs-test-noise curves (seed error bars), one pair per base."""
    from edgestem.report import plot_curves, plot_grid

    rc = cfg.robustness
    axis = "background weight w" if rc.axis == "background" else "dose (e-/pattern)"
    x = np.asarray(rc.test_levels, dtype=float)
    titles = {m: ("loss" if m == "loss" else f"{m} MAE ({UNITS[m]})") for m in METRICS}
    written = []
    for base in BASES:
        metrics = [m for m in METRICS if np.isfinite(g[base][m]["mean"]).any()]
        first = g[base][METRICS[0]]
        written.append(
            plot_grid(
                {titles[m]: (g[base][m]["mean"], g[base][m]["std"]) for m in metrics},
                first["rows"],
                first["cols"],
                folder / f"heatmap-{base}.png",
                title=f"{base} base: mean over seeds (+- std)",
                xlabel=f"test {axis}",
                ylabel="trained at",
            )
        )
        curves = {
            titles[m]: {
                name: (x, g[base][m]["mean"][i], np.nan_to_num(g[base][m]["std"][i]))
                for i, name in enumerate(first["rows"])
                if np.isfinite(g[base][m]["mean"][i]).any()
            }
            for m in metrics
        }
        written.append(
            plot_curves(
                curves,
                folder / f"curves-{base}.png",
                xlabel=f"test {axis}",
                log_x=rc.axis == "dose",
                title=f"{base} base: error vs test noise per training row (error bars: std over seeds)",
            )
        )
    return written


def run_study(cfg: Config, out: str | Path, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``edgestem robustness``: train and score every cell of the grid, then write table, figures, report.

    A killed study continues with ``resume=True`` (finished cells are kept, a cell's training resumes
    from its checkpoint, failed cells are tried again); without it an existing study is refused.
    """
    from edgestem.atomic import write_json
    from edgestem.config import save_config
    from edgestem.runinfo import stage_report

    t0 = time.perf_counter()
    out = Path(out)
    rc = cfg.robustness
    check_levels(rc)
    saved = out / "study.yaml"
    if saved.is_file():
        if not resume:
            raise EdgestemError(
                f"{out} already holds a robustness study; add --resume to continue it or choose another --out"
            )
        if study_fields(load_config(saved)) != study_fields(cfg):
            raise EdgestemError(f"{out} holds a study with another config ({saved}); resume it with that config")
    elif resume:
        raise EdgestemError(f"{out}: nothing to resume (no study.yaml); start without --resume")
    save_config(cfg, saved)
    data = prepare_data(cfg, out / "data", log)
    classical = classical_columns(data, out / "classical", rc.reference)
    plan = [(seed, name, levels) for seed in rc.seeds for name, levels in training_rows(rc)]
    cells = []
    for k, (seed, name, levels) in enumerate(plan, 1):
        path = out / "cells" / f"{name}-seed{seed}.json"
        cell = json.loads(path.read_text()) if path.is_file() else None
        if cell is None or cell["status"] != "ok":
            cell = run_cell(cfg, name, levels, seed, data, out)
            write_json(path, cell)
        cells.append(cell)
        log(f"[{k}/{len(plan)}] {_cell_line(cell)}")
    rows = tidy_rows(cfg, cells, classical)
    g = grids(cfg, rows)
    tables = write_table(rows, out)
    figs = figures(cfg, g, out / "figures")
    summary = {
        "cells": {"ok": sum(c["status"] == "ok" for c in cells), "failed": sum(c["status"] != "ok" for c in cells)},
        "failed": [{"train": c["train"], "seed": c["seed"], "error": c["error"]} for c in cells if c["status"] != "ok"],
        "findings": findings(cfg, g),
        "grids": {b: {m: {k: v for k, v in d.items()} for m, d in g[b].items()} for b in g},
        "classical": classical,
        "cell_seconds": {f"{c['train']}-seed{c['seed']}": c["seconds"] for c in cells},
        "train_loss": {f"{c['train']}-seed{c['seed']}": c.get("train_loss") for c in cells},
    }
    write_json(
        out / "robustness.json",
        stage_report(
            "robustness",
            inputs={"data": data.clean},
            outputs={"tables": tables, "figures": figs},
            config=cfg,
            metrics=summary,
            started=t0,
        ),
    )
    return {"rows": rows, "grids": g, "summary": summary, "tables": tables, "figures": figs}


def _cell_line(cell: dict[str, Any]) -> str:
    head = f"trained at {cell['train']}, seed {cell['seed']}"
    if cell["status"] != "ok":
        return f"{head}: FAILED ({cell['error']})"
    exx = {s["test"]: s["value"] for s in cell["scores"] if s["base"] == "noise-free" and s["metric"] == "exx"}
    text = ", ".join(f"{level_name(t)}: {v:.3f}" for t, v in exx.items())
    return f"{head}: exx MAE (%) at test {text} ({cell['seconds']:.0f} s)"


__all__ = [
    "BASES",
    "METRICS",
    "StudyData",
    "cell_config",
    "findings",
    "grid_markdown",
    "grids",
    "noise_for",
    "prepare_data",
    "run_study",
    "training_rows",
]
