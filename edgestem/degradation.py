"""The degradation report: how much strain accuracy survives each stage, at each noise level.

``edgestem report`` scores every stage a run directory holds on the same noisy patterns: the float
model (``RUN``), the distilled float model (``RUN/distill``), QAT (``RUN/qat``), QAT + pruning
(``RUN/prune``), the exported QONNX graph, the firmware emulations (hls4ml C++, FINN), and the
classical baseline. Each noise level draws its noise once (seeded) and every stage sees exactly
those patterns, through the one pre-processing and the one strain computation.

Emulated stages are slow (the hls4ml C++ runs about 25 patterns/s per process): each is run on a
seeded sample of ``check_patterns`` patterns per level and compared with the Brevitas model bit for
bit. Only when the sample is identical do its full-scan maps come from the Brevitas forward
(recorded as ``"via": "brevitas (bit-exact on N patterns)"``); a stage that differs is scored on its
own outputs for the sample only, and the difference is reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import EdgestemError
from edgestem.evaluate import COMPONENTS, label_maps, maps_from_affine, regression_slope, strain_mae

MODEL_STAGES = (
    ("float", "train"),
    ("distilled", "distill"),
    ("qat", "qat"),
    ("pruned", "prune"),
)  # (report name, run-directory stage)
EMULATED = ("qonnx", "hls4ml", "finn")


def _stage_models(run: Path) -> dict[str, Any]:
    from edgestem.emulate.float_torch import Backend as TorchBackend
    from edgestem.rundir import has_checkpoint, stage_dir

    out = {}
    for name, stage in MODEL_STAGES:
        if has_checkpoint(stage_dir(run, stage)):
            out[name] = TorchBackend(run, stage_dir=stage_dir(run, stage))
    return out


def _emulated(run: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """Emulation backends whose artifacts the run holds (a missing one is skipped, not an error)."""
    from edgestem.emulate import get_backend

    found = {}
    for name in names:
        try:
            found[name] = get_backend(name, run)
        except EdgestemError:
            continue
    return found


def degradation(
    run: str | Path,
    data: str | Path,
    levels: list[tuple[str, Any]],
    *,
    check_patterns: int = 64,
    baseline: bool = True,
    emulated: tuple[str, ...] = EMULATED,
    reference: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Strain MAE per stage and noise level on labelled ``data`` (clean: ``levels`` add the noise)."""
    import torch

    from edgestem.data.noise import apply_noise
    from edgestem.data.preprocess import preprocess
    from edgestem.emulate import get_backend
    from edgestem.rundir import open_stage
    from edgestem.seeds import rng

    run = Path(run)
    stage = open_stage(run)
    model, cfg = stage.model, stage.cfg
    d = stage.read(data)
    if not set(COMPONENTS) <= set(d.labels):
        raise EdgestemError(f"{data} has no strain labels; the report needs labelled (simulated) data")
    symmetry = stage.symmetry(d)
    truth = label_maps(d.labels, reference, symmetry)
    models = _stage_models(run)
    emus = _emulated(run, emulated)
    brevitas = get_backend("brevitas", run) if emus else None
    sample = np.sort(rng(cfg.seed, "report_sample").permutation(len(d.x))[:check_patterns])
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []

    def score(stage: str, label: str, raw: np.ndarray, via: str | None = None) -> None:
        with torch.no_grad():
            A = model.head(torch.from_numpy(raw)).numpy()
        maps = maps_from_affine(A, d.scan_shape, reference, symmetry)
        rows.append({"stage": stage, "noise": label, **_scores(maps, truth, reference), "via": via or stage})

    for i, (label, noise) in enumerate(levels):
        noisy = d.raw if noise is None else apply_noise(d.raw, noise, rng(cfg.seed, "report", i))
        x = np.ascontiguousarray(preprocess(noisy, cfg.preprocess)[:, None])
        outputs = {}
        for name, be in models.items():
            outputs[name] = be.predict(x)
            score(name, label, outputs[name])
        if emus:
            ref_full = brevitas.predict(x)
            for name, be in emus.items():
                t0 = time.perf_counter()
                got = be.predict(x[sample])
                rate = len(sample) / max(time.perf_counter() - t0, 1e-9)
                same = bool(np.array_equal(got, ref_full[sample]))
                checks.append(
                    {
                        "stage": name,
                        "noise": label,
                        "patterns": len(sample),
                        "mismatching_patterns": int((got != ref_full[sample]).any(axis=1).sum()),
                        "max_abs_diff": float(np.abs(got - ref_full[sample]).max()),
                        "patterns_per_second": rate,
                    }
                )
                if same:
                    score(name, label, ref_full, via=f"brevitas (bit-exact on {len(sample)} patterns)")
        if baseline:
            from edgestem.baseline import classical_strain

            res = classical_strain(noisy.reshape(*d.scan_shape, *noisy.shape[-2:]), reference, symmetry)
            rows.append({"stage": "classical", "noise": label, **_scores(res.maps, truth, reference)})
        if progress is not None:
            progress(i + 1, len(levels))
    return {"rows": rows, "checks": checks, "stages": _order(rows), "levels": [lv for lv, _ in levels]}


def _scores(maps: dict[str, np.ndarray], truth: dict[str, np.ndarray], reference: str | None) -> dict[str, float]:
    """MAE per component and, as ``slope_<component>``, the regression slope of prediction on label."""
    slopes = regression_slope(maps, truth)
    return {**strain_mae(maps, truth, reference), **{f"slope_{k}": slopes[k] for k in COMPONENTS}}


def _order(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["stage"] not in seen:
            seen.append(r["stage"])
    return seen


def markdown(result: dict[str, Any], component: str = "exx") -> str:
    """One table per component: a row per stage, a column per noise level (MAE, % or degrees; slope)."""
    unit = "deg" if component == "theta" else "%"
    levels = result["levels"]
    by = {(r["stage"], r["noise"]): r for r in result["rows"]}
    lines = [
        f"| {component} MAE ({unit}) (slope) | " + " | ".join(levels) + " |",
        "|---" * (len(levels) + 1) + "|",
    ]

    def cell(r: dict[str, Any]) -> str:
        slope = r.get(f"slope_{component}")
        return f"{r[component]:.3f}" + (f" ({slope:.2f})" if slope is not None else "")

    for stage in result["stages"]:
        cells = [cell(by[(stage, lv)]) if (stage, lv) in by else "-" for lv in levels]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(result: dict[str, Any], reference: str = "float") -> dict[str, dict[str, dict[str, float]]]:
    """MAE of every stage over the float model's, per noise level and component."""
    by = {(r["stage"], r["noise"]): r for r in result["rows"]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (stage, lv), r in by.items():
        base = by.get((reference, lv))
        if base is None:
            continue
        out.setdefault(stage, {})[lv] = {k: r[k] / base[k] if base[k] else float("nan") for k in COMPONENTS}
    return out


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Error vs noise, one line per stage, one panel per component (PNG, atomic)."""
    from edgestem.report import _pyplot, save_figure

    plt = _pyplot()
    levels = result["levels"]
    by = {(r["stage"], r["noise"]): r for r in result["rows"]}
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), constrained_layout=True)
    for ax, comp in zip(axes, COMPONENTS, strict=True):
        for stage in result["stages"]:
            ys = [by[(stage, lv)][comp] if (stage, lv) in by else np.nan for lv in levels]
            style = "s--" if stage == "classical" else "o-"
            ax.plot(range(len(levels)), ys, style, label=stage, alpha=0.85)
        ax.set_xticks(range(len(levels)), levels, rotation=30)
        ax.set(title=comp, ylabel="MAE (deg)" if comp == "theta" else "MAE (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, Path(path))


def write_report(run: str | Path, result: dict[str, Any], out_dir: str | Path, **info: Any) -> dict[str, Path]:
    """report.json, report.md and report.png in ``out_dir`` (atomic)."""
    from edgestem.atomic import write_json, write_text
    from edgestem.runinfo import stage_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "figure": out / "report.png"}
    body = [f"# Degradation report: {run}", ""]
    for comp in COMPONENTS:
        body += [markdown(result, comp), ""]
    if result["checks"]:
        body += [
            "| emulated stage | noise | patterns | mismatching | max abs diff | patterns/s |",
            "|---|---|---|---|---|---|",
        ]
        for c in result["checks"]:
            body.append(
                f"| {c['stage']} | {c['noise']} | {c['patterns']} | {c['mismatching_patterns']} | "
                f"{c['max_abs_diff']:.3g} | {c['patterns_per_second']:.0f} |"
            )
    write_text(paths["markdown"], "\n".join(body) + "\n")
    plot(result, paths["figure"])
    metrics = {**result, "ratio_to_float": ratios(result), **info}
    if "distilled" in result["stages"]:  # QAT starts from the distilled encoder: that is its float reference
        metrics["ratio_to_distilled"] = ratios(result, "distilled")
    write_json(paths["json"], stage_report("report", inputs={"run": run}, outputs=paths, metrics=metrics))
    return paths


__all__ = ["degradation", "markdown", "plot", "ratios", "write_report"]
