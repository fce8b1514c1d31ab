"""Throughput of the simulator, the readers and the pre-processing function (patterns per second).

    python benchmarks/simulate.py --out bench-simulate.json [--scan 32] [--size 64] [--repeat 3]

Writes JSON with the figures and the machine. Each figure is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from edgestem.atomic import write_json
from edgestem.config import load_config
from edgestem.data.io import open_4dstem, write_4dstem
from edgestem.data.noise import apply_noise, noise_rng
from edgestem.data.preprocess import preprocess
from edgestem.data.simulate import render_patterns, simulate_to_file, specimen_labels
from edgestem.runinfo import machine, versions
from edgestem.strain import deformation_gradient


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scan", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    cfg = load_config(None, {"simulate.scan": args.scan, "simulate.size": args.size})
    n = args.scan * args.scan
    labels = specimen_labels(cfg.simulate, np.random.default_rng(0))
    F = deformation_gradient(labels["exx"], labels["eyy"], labels["exy"], labels["theta"]).reshape(-1, 2, 2)
    results: dict[str, float] = {}
    results["render"] = n / best(lambda: render_patterns(F, cfg.simulate.lattice, args.size), args.repeat)
    patterns = render_patterns(F, cfg.simulate.lattice, args.size)
    for name, noise in (
        ("noise_background", {"noise.model": "background", "noise.w": 0.25}),
        ("noise_dose", {"noise.model": "dose", "noise.dose": 1e3}),
    ):
        ncfg = load_config(None, noise).noise
        results[name] = n / best(lambda ncfg=ncfg: apply_noise(patterns, ncfg, noise_rng(0, 0)), args.repeat)
    results["preprocess"] = n / best(lambda: preprocess(patterns, cfg.preprocess), args.repeat)

    data = patterns.reshape(args.scan, args.scan, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results["simulate_to_file"] = n / best(lambda: simulate_to_file(cfg, tmp / "sim.h5"), args.repeat)
        for ext in (".h5", ".npy", ".npz", ".mat"):
            path = write_4dstem(tmp / f"data{ext}", data)

            def read_all(path=path):
                with open_4dstem(path) as ds:
                    for _ in ds.iter_rows():
                        pass

            def read_one_by_one(path=path):
                with open_4dstem(path) as ds:
                    for i in range(args.scan):
                        for j in range(args.scan):
                            ds.pattern(i, j)

            results[f"read_rows{ext}"] = n / best(read_all, args.repeat)
            results[f"read_patterns{ext}"] = n / best(read_one_by_one, args.repeat)

    report = {
        "benchmark": "simulate",
        "scan": [args.scan, args.scan],
        "size": args.size,
        "patterns_per_second": {k: round(v, 1) for k, v in results.items()},
        "machine": machine(),
        "versions": versions(),
    }
    write_json(args.out, report)
    for k, v in report["patterns_per_second"].items():
        print(f"{k:28s} {v:12.1f} patterns/s")


if __name__ == "__main__":
    main()
