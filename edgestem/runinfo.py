"""What every stage records next to its artifact: inputs, config, metrics, versions, machine, timing."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = (
    "edgestem",
    "numpy",
    "scipy",
    "h5py",
    "torch",
    "brevitas",
    "qonnx",
    "hls4ml",
    "onnx",
    "onnxruntime",
)


def versions() -> dict[str, str]:
    """Installed versions of the packages that can change edgestem's numbers (without importing them)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    """A short description of the machine, for benchmark and stage reports."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "hostname": platform.node(),
    }


def stage_report(
    stage: str,
    *,
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    config: Any = None,
    metrics: dict[str, Any] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """The JSON report a stage writes beside its artifact."""
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return {
        "stage": stage,
        "inputs": {k: str(v) if isinstance(v, Path) else v for k, v in (inputs or {}).items()},
        "outputs": {k: str(v) if isinstance(v, Path) else v for k, v in (outputs or {}).items()},
        "config": cfg,
        "metrics": metrics or {},
        "seconds": None if started is None else round(time.perf_counter() - started, 3),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "versions": versions(),
        "machine": machine(),
    }
