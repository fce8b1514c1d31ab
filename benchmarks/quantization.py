"""Quantization and pruning benchmark: strain MAE vs bit width and vs sparsity, next to the float model.

    python benchmarks/quantization.py --out quantization.json [--quick] [--plot docs/figures/quantization.png]
    python benchmarks/quantization.py --plot docs/figures/quantization.png --from quantization.json

At each background level w (0, 0.25, 0.5) a hexagonal polycrystal is simulated noise-free and given
that noise (a seeded draw per level). The float CC-ST-AE is trained without labels on the noisy scan
(per-level training, as in benchmarks/accuracy.py); from it, ``edgestem qat`` trains 4-, 6- and
8-bit encoders and ``edgestem prune`` fine-tunes 25 / 50 / 75 % unstructured magnitude pruning of
the float model. Every model is scored on the same noisy patterns with the one pre-processing and
the one strain computation (strain MAE in %, theta MAE in degrees). The JSON holds every MAE, the
ratio to the float model at the same level, the smallest bit width and the largest sparsity within
10 % of float at every level, times, and the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from edgestem.atomic import write_json
from edgestem.compress.prune import prune_run
from edgestem.compress.quantize import qat_run
from edgestem.config import load_config
from edgestem.data.dataset import load_data
from edgestem.data.noise import add_noise_to_file
from edgestem.data.simulate import simulate_to_file
from edgestem.evaluate import COMPONENTS, compare_models
from edgestem.rundir import load_checkpoint, model_from_checkpoint
from edgestem.runinfo import machine, versions
from edgestem.train import train

W_LEVELS = [0.0, 0.25, 0.5]
BITS = [4, 6, 8]
SPARSITY = [0.25, 0.5, 0.75]
TOLERANCE = 1.10  # "within 10 % of float"


def base_overrides(quick: bool, seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "simulate.scan": 24 if quick else 32,
        "simulate.specimen.kind": "polycrystal",
        "simulate.specimen.n_grains": 6,
        "train.epochs": 15 if quick else 30,
        "qat.epochs": 5 if quick else 10,
        "prune.epochs": 4 if quick else 6,
        "prune.steps": 2 if quick else 3,
    }


def strain_mean(row: dict[str, float]) -> float:
    """Mean of the three strain components' MAE (%): the headline strain error."""
    return (row["exx"] + row["eyy"] + row["exy"]) / 3


def level(w: float, work: Path, overrides: dict[str, Any], bits: list[int], sparsity: list[float]) -> dict[str, Any]:
    """Train float, QAT at each bit width and pruned models at one noise level; score them all."""
    cfg = load_config(None, {**overrides, "noise.model": "background" if w > 0 else "none", "noise.w": w})
    clean = simulate_to_file(cfg, work / "clean.h5") if not (work / "clean.h5").exists() else work / "clean.h5"
    data = work / f"w{w:g}.h5"
    if w > 0:
        add_noise_to_file(clean, data, cfg.noise, seed=cfg.seed)
    else:
        data = clean
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    run = work / f"run-w{w:g}"
    train(cfg, data, run)
    times["float"] = time.perf_counter() - t0
    models = {"float": model_from_checkpoint(load_checkpoint(run))[0]}
    for b in bits:
        t0 = time.perf_counter()
        qat_run(run, cfg.qat.model_copy(update={"bits": b}), out=run / f"qat{b}")
        times[f"qat{b}"] = time.perf_counter() - t0
        models[f"qat{b}"] = model_from_checkpoint(load_checkpoint(run / f"qat{b}"))[0]
    for s in sparsity:
        t0 = time.perf_counter()
        pcfg = cfg.model_copy(update={"prune": cfg.prune.model_copy(update={"sparsity": s})})
        prune_run(run, pcfg, source="float", out=run / f"prune{s:g}")
        times[f"prune{s:g}"] = time.perf_counter() - t0
        models[f"prune{s:g}"] = model_from_checkpoint(load_checkpoint(run / f"prune{s:g}"))[0]
    d = load_data(data, cfg)
    rows = compare_models(models, d.raw, d.labels, d.scan_shape, cfg, d.symmetry)
    by = {r["model"]: r for r in rows}
    ratio = {
        name: {**{k: r[k] / by["float"][k] for k in COMPONENTS}, "strain": strain_mean(r) / strain_mean(by["float"])}
        for name, r in by.items()
    }
    return {"w": w, "mae": by, "ratio_to_float": ratio, "seconds": {k: round(v, 1) for k, v in times.items()}}


def verdict(levels: list[dict[str, Any]], bits: list[int], sparsity: list[float]) -> dict[str, Any]:
    """Smallest bit width / largest sparsity whose strain and theta MAE stay within 10 % at every level."""

    def ok(name: str) -> bool:
        return all(
            lv["ratio_to_float"][name]["strain"] <= TOLERANCE and lv["ratio_to_float"][name]["theta"] <= TOLERANCE
            for lv in levels
        )

    ok_bits = [b for b in sorted(bits) if ok(f"qat{b}")]
    ok_sparsity = [s for s in sorted(sparsity) if ok(f"prune{s:g}")]
    return {
        "criterion": "mean strain MAE and theta MAE <= 1.10 x float at every noise level",
        "bits_within": ok_bits,
        "smallest_bits": ok_bits[0] if ok_bits else None,
        "sparsity_within": ok_sparsity,
        "largest_sparsity": ok_sparsity[-1] if ok_sparsity else None,
        "qat6_meets_aim": ok("qat6") if 6 in bits else None,
        "sparsity50_meets_aim": ok("prune0.5") if 0.5 in sparsity else None,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels: strain MAE vs bits (float at the right) and vs sparsity, one line per noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    bits, sparsity = result["bits"], result["sparsity"]
    for lv in result["levels"]:
        mae = lv["mae"]
        xs = [str(x) for x in bits] + ["float"]
        a.plot(
            xs,
            [strain_mean(mae[f"qat{x}"]) for x in bits] + [strain_mean(mae["float"])],
            "o-",
            label=f"w = {lv['w']:g}",
        )
        ss = [0.0, *sparsity]
        ys = [strain_mean(mae["float"])] + [strain_mean(mae[f"prune{s:g}"]) for s in sparsity]
        b.plot([100 * s for s in ss], ys, "o-", label=f"w = {lv['w']:g}")
    a.set(xlabel="bits (weights and activations)", ylabel="strain MAE (%), mean of exx, eyy, exy", title="QAT")
    b.set(xlabel="unstructured sparsity (%)", ylabel="strain MAE (%)", title="Magnitude pruning + fine-tuning")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="JSON result file")
    ap.add_argument("--quick", action="store_true", help="smaller scan, fewer epochs (minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", default=",".join(f"{w:g}" for w in W_LEVELS), help="background w levels")
    ap.add_argument("--bits", default=",".join(map(str, BITS)))
    ap.add_argument("--sparsity", default=",".join(f"{s:g}" for s in SPARSITY))
    ap.add_argument("--plot", type=Path, help="write the figure here")
    ap.add_argument("--from", dest="source", type=Path, help="plot an existing result JSON instead of running")
    args = ap.parse_args()
    if args.source is not None:
        import json

        result = json.loads(args.source.read_text())
    else:
        if args.out is None:
            ap.error("--out is required unless --from is given")
        bits = [int(b) for b in args.bits.split(",") if b]
        sparsity = [float(s) for s in args.sparsity.split(",") if s]
        started = time.perf_counter()
        overrides = base_overrides(args.quick, args.seed)
        levels = []
        with tempfile.TemporaryDirectory(prefix="edgestem-quant-") as tmp:
            for w in (float(x) for x in args.levels.split(",") if x):
                print(f"w = {w:g} ...", flush=True)
                levels.append(level(w, Path(tmp), overrides, bits, sparsity))
                print({k: round(v["strain"], 3) for k, v in levels[-1]["ratio_to_float"].items()}, flush=True)
                # Partial results after every level: a long run that is stopped still leaves its numbers.
                write_json(args.out.with_suffix(".partial.json"), {"overrides": overrides, "levels": levels})
        result = {
            "benchmark": "quantization",
            "quick": args.quick,
            "overrides": overrides,
            "bits": bits,
            "sparsity": sparsity,
            "levels": levels,
            "verdict": verdict(levels, bits, sparsity),
            "seconds": round(time.perf_counter() - started, 1),
            "versions": versions(),
            "machine": machine(),
        }
        write_json(args.out, result)
        print(result["verdict"])
    if args.plot is not None:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
