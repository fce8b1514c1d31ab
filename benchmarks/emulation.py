"""Emulation benchmark: patterns/s of every backend a run holds, on the same patterns, in one run.

    python benchmarks/emulation.py --run runs/demo --out emulation.json [--patterns 200] [--workers 2]

Every backend (torch, brevitas, qonnx, onnxruntime, hls4ml, finn, verilator) whose artifacts the run
holds maps the same pre-processed patterns (a seeded sample of the run's training data); the JSON
holds its patterns/s, its speed relative to Brevitas measured in the same run, and its mismatch
count against the Brevitas reference (0 required for the exact backends). Backends whose artifacts
are missing are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edgestem.atomic import write_json
from edgestem.data.dataset import load_data
from edgestem.emulate import get_backend
from edgestem.errors import EdgestemError
from edgestem.registry import EMULATORS
from edgestem.rundir import load_checkpoint, load_run_config
from edgestem.runinfo import machine, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run directory (e.g. the demo's runs/demo)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--patterns", type=int, default=200)
    ap.add_argument("--workers", type=int, default=None, help="hls4ml processes (default: up to 4)")
    args = ap.parse_args()

    cfg = load_run_config(args.run)
    d = load_data(load_checkpoint(args.run)["data"]["path"], cfg)
    idx = np.sort(np.random.default_rng([cfg.seed, 25]).permutation(len(d.x))[: args.patterns])
    x = np.ascontiguousarray(d.x[idx], dtype=np.float32)
    ref_be = get_backend("brevitas", args.run)
    ref_be.predict(x[:2])  # warm-up: first-call costs (allocations, thread pools) are not throughput
    t0 = time.perf_counter()
    ref = ref_be.predict(x)
    ref_rate = len(x) / (time.perf_counter() - t0)
    rows = {}
    for name in EMULATORS.names():
        try:
            be = get_backend(name, args.run, **({"workers": args.workers} if name == "hls4ml" and args.workers else {}))
        except EdgestemError as exc:
            rows[name] = {"skipped": str(exc)}
            continue
        if name != "brevitas":
            be.predict(x[:2])  # warm-up
        t0 = time.perf_counter()
        got = ref if name == "brevitas" else be.predict(x)
        seconds = time.perf_counter() - t0 if name != "brevitas" else len(x) / ref_rate
        rows[name] = {
            "patterns": len(x),
            "patterns_per_second": len(x) / seconds,
            "relative_to_brevitas": (len(x) / seconds) / ref_rate,
            "exact_required": bool(be.exact),
            "mismatching_patterns": int((got != ref).any(axis=1).sum()),
            "max_abs_diff": float(np.abs(got - ref).max()),
        }
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[name].items()}, flush=True)
    write_json(
        args.out,
        {
            "benchmark": "emulation",
            "run": str(args.run),
            "backends": rows,
            "versions": versions(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
