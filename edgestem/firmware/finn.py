"""FINN firmware from the exported QONNX encoder (``edgestem firmware --backend finn``).

FINN (finn-plus 1.6.1) lives in its own environment, ``.venv-finn`` (``scripts/setup-finn.sh``;
docs/firmware.md says why it cannot share edgestem's). This module only prepares and calls it: it
writes a JSON build config and runs :mod:`edgestem.firmware.finn_driver` with that environment's
Python on ``RUN/export/encoder_nchw.onnx`` (FINN lowers NCHW convolutions itself), then reads
FINN's reports. ``RUN/firmware/finn/`` then holds:

- ``report/estimate_*.json`` (FINN's cycle and resource estimates: what ``edgestem synth-report``
  and ``edgestem budget`` read), ``report/auto_folding_config.json`` (the folding FINN chose for
  the target frame rate) and ``report/edgestem_build.json`` (interface, tie rounding, folding);
- ``build/code_gen_ipgen_*``: the generated HLS C++ and filled RTL templates of every layer;
- ``intermediate_models/`` (the graph after every step), ``emulation.onnx`` (the graph FINN executes
  in Python, for ``edgestem emulate --backend finn``), ``build.json`` (the config), ``steps.json``,
  ``finn.log`` (everything FINN printed);
- with Vivado on PATH: ``stitched_ip/`` and ``report/ooc_synth_and_timing.json``;
- ``firmware.json``, written last: steps and times, the estimate summary (LUT, BRAM18, DSP and % of
  the board, slowest layer, frames/s at the clock), the target frame rate and what meeting it takes
  (copies, the layers that limit), folding per layer, and FINN's Python execution checked against
  the Brevitas model on real patterns.

The target frame rate sets the folding (FINN's ``target_fps``); it defaults to the 4D Camera's
87,000 patterns/s (``edgestem budget``'s table). A missing FINN environment is a one-line error
saying to run ``scripts/setup-finn.sh``: the set-up downloads 2.3 GB and takes one to two minutes,
too much to start silently from a firmware command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import ConfigError, EdgestemError, ToolMissingError
from edgestem.export import qonnx as qx
from edgestem.firmware.registry import (
    FirmwareMismatch,
    FirmwareRequest,
    clear_project,
    make_request,
    write_firmware_report,
)

BACKEND = "finn"
DRIVER = Path(__file__).with_name("finn_driver.py")
VENV_VARIABLE = "EDGESTEM_FINN_VENV"  # where the FINN environment is, if not <checkout>/.venv-finn
CONFIG_FILE = "build.json"
LOG_FILE = "finn.log"
STEPS_FILE = "steps.json"
BUILD_REPORT = "edgestem_build.json"
DEFAULT_DETECTOR = "4dcamera"
# FINN's own steps up to its estimates, with edgestem's (``edgestem_*``, see finn_driver.py) in between.
ESTIMATE_STEPS = (
    "edgestem_integer_input",
    "step_qonnx_to_finn",
    "step_tidy_up",
    "step_streamline",
    "edgestem_integer_tail",
    "edgestem_round_half_even",
    "step_convert_to_hw",
    "edgestem_host_dequant",
    "step_minimize_bit_width_initial",
    "step_create_dataflow_partition",
    "step_specialize_layers",
    "step_target_fps_parallelization",
    "step_apply_folding_config",
    "step_minimize_bit_width",
    "step_generate_estimate_reports",
)
CODEGEN_STEPS = ("step_hw_codegen",)  # HLS C++ and RTL of every layer: no vendor tool needed
# Vivado / Vitis HLS: code generation + IP generation + FIFO sizing (rtlsim), stitched IP, OOC synthesis.
VIVADO_STEPS = ("step_generate_hardware", "step_create_stitched_ip", "step_out_of_context_synthesis")
TIE_ROUNDING = ("half_even", "half_up")
# Weight stream width per PE (bits) FINN may unfold an MVAU to; FINN's default, 36, caps SIMD at 6 for
# 6-bit weights, far below what a 64 x 64 frame needs. 2048 stays under HLS's ap_int limit (8191).
MVAU_WWIDTH_MAX = 2048
UTILISATION_AIM = 0.70  # the resource aim: at most 70 % of LUT, BRAM and DSP


# --- the FINN environment -----------------------------------------------------------------------


def finn_venv() -> Path:
    """The FINN environment: ``$EDGESTEM_FINN_VENV``, else ``.venv-finn`` of this checkout, else of the cwd."""
    if os.environ.get(VENV_VARIABLE):
        return Path(os.environ[VENV_VARIABLE])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "scripts" / "setup-finn.sh").is_file():
        return checkout / ".venv-finn"
    return Path.cwd() / ".venv-finn"


def finn_python(venv: Path | None = None) -> Path:
    """The FINN environment's Python, or a one-line ToolMissingError saying how to create it."""
    venv = finn_venv() if venv is None else Path(venv)
    python = venv / "bin" / "python"
    if not python.is_file():
        raise ToolMissingError(
            f"FINN environment {venv} not found: run scripts/setup-finn.sh (creates it: finn-plus 1.6.1, "
            f"2.3 GB, 1-2 min) or point {VENV_VARIABLE} at one"
        )
    return python


def vivado() -> str | None:
    """Why the Vivado-only steps cannot run, or None when ``vivado`` is on PATH and XILINX_VIVADO is set."""
    if shutil.which("vivado") is None:
        return "vivado is not on PATH"
    if not os.environ.get("XILINX_VIVADO"):
        return "XILINX_VIVADO is not set"
    return None


def driver_env(out: Path) -> dict[str, str]:
    """The environment of the driver: FINN_BUILD_DIR inside the firmware folder (the generated code stays there)."""
    env = dict(os.environ)
    env["FINN_BUILD_DIR"] = str((Path(out) / "build").resolve())
    env.pop("PYTHONPATH", None)  # edgestem's packages must not leak into FINN's interpreter
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_driver(args: list[str], out: Path, log: Path, what: str) -> None:
    """Run the driver in the FINN environment with output to ``log``; a failure is one line naming the log."""
    cmd = [str(finn_python()), "-P", str(DRIVER), *args]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=driver_env(out), check=False)
    if proc.returncode != 0:
        raise EdgestemError(f"FINN {what} failed: {_failure(out, log)} (log: {log})")


def _failure(out: Path, log: Path) -> str:
    """The failed step and its error from steps.json, else the log's last error line."""
    try:
        failed = json.loads((out / STEPS_FILE).read_text()).get("failed")
    except (OSError, ValueError):
        failed = None
    if failed:
        return f"step {failed['step']}: {failed['error']}"
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1][:300]


# --- configuration and arithmetic ---------------------------------------------------------------


def default_target_fps() -> float:
    """The frame rate firmware is folded for by default: the 4D Camera's (detector table)."""
    from edgestem.targets.detectors import load_detectors

    return load_detectors()[DEFAULT_DETECTOR].frame_rate_hz


def resolve_target_fps(target: float | str | None) -> float:
    """A frame rate in Hz from a number, a detector name (``4dcamera``) or a rate (``87k``); None: the default."""
    if target is None:
        return default_target_fps()
    if isinstance(target, str):
        from edgestem.targets.detectors import resolve_detector

        target = resolve_detector(target).frame_rate_hz
    if not target > 0:
        raise ConfigError(f"--target-fps {target:g}: must be positive")
    return float(target)


def build_config(
    part: str,
    clock_ns: float,
    target_fps: float,
    *,
    with_vivado: bool = False,
    tie_rounding: str = "half_even",
    mvau_wwidth_max: int = MVAU_WWIDTH_MAX,
) -> dict[str, Any]:
    """The JSON build config the driver gets: part, clock, target frame rate and the steps to run."""
    if tie_rounding not in TIE_ROUNDING:
        raise ConfigError(f"tie rounding {tie_rounding!r}: choose {' or '.join(TIE_ROUNDING)}")
    steps = [s for s in ESTIMATE_STEPS if tie_rounding == "half_even" or s != "edgestem_round_half_even"]
    steps += VIVADO_STEPS if with_vivado else CODEGEN_STEPS
    return {
        "fpga_part": part,
        "clock_ns": float(clock_ns),
        # FINN takes an integer; rounding up never asks for less than the target.
        "target_fps": int(math.ceil(target_fps)),
        "folding_two_pass_relaxation": True,
        "mvau_wwidth_max": int(mvau_wwidth_max),
        "standalone_thresholds": True,
        "tie_rounding": tie_rounding,
        "vivado": bool(with_vivado),
        "steps": steps,
    }


def _percent(resources: dict[str, Any], board: Any) -> dict[str, float] | None:
    if board is None or board.resources is None:
        return None
    avail = board.resources.model_dump()
    return {k: round(100.0 * v / avail[k], 2) for k, v in resources.items() if v is not None and avail.get(k)}


def at_max_parallelism(row: dict[str, Any]) -> bool:
    """Whether a layer's folding is fully unrolled (every PE / SIMD knob at its bound)."""
    knobs = [k for k in ("PE", "SIMD") if k in row and f"max_{k}" in row]
    full = all(row[k] >= row[f"max_{k}"] for k in knobs)
    if row.get("op_type", "").startswith("ConvolutionInputGenerator") and not row.get("depthwise"):
        full = full and bool(row.get("parallel_window"))  # a window per cycle: its last knob (not for pooling)
    return bool(knobs) and full


def summarize(
    estimates: dict[str, Any], build: dict[str, Any], board: Any, clock_ns: float, target_fps: float
) -> dict[str, Any]:
    """Estimate summary, folding per layer and the target analysis from FINN's reports and the driver's.

    ``estimates`` is :func:`edgestem.firmware.reports.parse_finn_estimates` of ``report/``; ``build``
    is the driver's ``edgestem_build.json``.
    """
    from edgestem.targets.throughput import finn_folding, verdict

    res = {k: v for k, v in estimates["resources"].items() if v is not None}
    fps = estimates["estimated_throughput_fps"]
    layers: dict[str, Any] = {}
    for name, row in build.get("layers", {}).items():
        est = estimates["layers"].get(name, {})
        layers[name] = {**row, **{k: v for k, v in est.items() if k != "cycles" and v is not None}}
        if row.get("cycles") is None and est.get("cycles") is not None:
            layers[name]["cycles"] = est["cycles"]
        layers[name]["at_max_parallelism"] = at_max_parallelism(row)
    cycles = {k: v["cycles"] for k, v in layers.items() if v.get("cycles") is not None}
    v = verdict(estimates["max_cycles"], clock_ns, target_fps)
    fold = finn_folding(cycles, clock_ns, target_fps)
    stuck = [k for k in fold["layers_over_budget"] if layers[k]["at_max_parallelism"]]
    copies = v["copies_needed"]
    total = {k: val * copies for k, val in res.items()}
    pct = _percent(total, board)
    target: dict[str, Any] = {
        "fps": target_fps,
        "frame_time_us": 1e6 / target_fps,
        "cycle_budget": fold["cycle_budget"],
        "met": v["keeps_up"],
        "speedup_needed": v["speedup_needed"],
        "layers_over_budget": fold["layers_over_budget"],
        "layers_at_max_parallelism": stuck,
        "copies_needed": copies,
        "resources_for_target": total,
        "utilization_for_target_percent": pct,
        "within_aim": None
        if pct is None
        else all(pct.get(k, 0) <= 100 * UTILISATION_AIM for k in ("lut", "bram18", "dsp")),
    }
    if not v["keeps_up"]:
        slow = estimates["max_cycles_node_name"]
        row = layers.get(slow, {})
        why = (
            f"{slow} ({row.get('op_type', '?')}) needs {estimates['max_cycles']:,} cycles per frame"
            + (" fully unrolled" if slow in stuck else "")
            + f", the budget at {1000 / clock_ns:g} MHz is {fold['cycle_budget']:,}"
        )
        if slow in stuck and row.get("max_SIMD") == 1:
            why += ": it takes one input pixel per cycle and FINN's sliding-window unit cannot take more"
        target["limit"] = why
        used = ", ".join(
            f"{total[k]:,} {label}" + ("" if pct is None else f" ({pct[k]:.1f}%)")
            for k, label in (("lut", "LUT"), ("bram18", "BRAM18"), ("dsp", "DSP"))
            if k in total
        )
        aim = {True: "within", False: "beyond", None: "unknown against"}[target["within_aim"]]
        target["meet_with"] = (
            f"{copies} copies side by side (patterns dealt round-robin): {used}, "
            f"{aim} {UTILISATION_AIM:.0%} of the board"
        )
    return {
        "estimate": {
            "resources": res,
            "utilization_percent": _percent(res, board),
            "max_cycles": estimates["max_cycles"],
            "slowest_layer": estimates["max_cycles_node_name"],
            "critical_path_cycles": estimates["critical_path_cycles"],
            "estimated_fps": fps,
            "frame_interval_us": estimates["max_cycles"] * clock_ns / 1000.0,
            "latency_us": None
            if estimates.get("estimated_latency_ns") is None
            else float(estimates["estimated_latency_ns"]) / 1000.0,
            "clock_ns": clock_ns,
        },
        "target": target,
        "layers": layers,
    }


# --- build --------------------------------------------------------------------------------------


def execute(build_dir: Path, x: np.ndarray) -> np.ndarray:
    """FINN's Python execution of a build's ``emulation.onnx`` on patterns ``(N, 1, H, W)``: outputs ``(N, K)``."""
    build_dir = Path(build_dir)
    with tempfile.TemporaryDirectory(prefix="edgestem-finn-") as tmp:
        inp, outp = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        np.save(inp, np.ascontiguousarray(x, dtype=np.float32))
        log = Path(tmp) / "execute.log"
        try:
            run_driver(
                ["--execute", str(build_dir), "--inputs", str(inp), "--outputs", str(outp)], build_dir, log, "execution"
            )
        except EdgestemError:
            kept = build_dir / "execute.log"
            shutil.copy(log, kept)
            raise EdgestemError(
                f"FINN execution of {build_dir / 'emulation.onnx'} failed: {_failure(build_dir, log)} (log: {kept})"
            ) from None
        return np.load(outp).astype(np.float64)


def build(req: FirmwareRequest) -> dict[str, Any]:
    """FINN build of a run: estimates and generated code (Vivado steps if available); returns ``firmware.json``."""
    return build_request(req, target_fps=req.target_fps)


def build_finn(
    run: str | Path,
    *,
    board: str | Any = "zcu104",
    clock_ns: float | None = None,
    target_fps: float | str | None = None,
    patterns: int = 200,
    data: str | Path | None = None,
    tie_rounding: str = "half_even",
) -> dict[str, Any]:
    """Python entry with FINN's own options (the target frame rate, the tie rounding); see :func:`build_request`."""
    req = make_request(run, board=board, clock_ns=clock_ns, data=data, patterns=patterns)
    return build_request(req, target_fps=target_fps, tie_rounding=tie_rounding)


def build_request(
    req: FirmwareRequest, *, target_fps: float | str | None = None, tie_rounding: str = "half_even"
) -> dict[str, Any]:
    """Run the FINN build of ``req.run`` into ``RUN/firmware/finn/``, check its execution, write ``firmware.json``."""
    from edgestem.atomic import write_json
    from edgestem.firmware.reports import parse_finn_estimates

    t0 = time.perf_counter()
    fps = resolve_target_fps(target_fps)
    finn_python()  # fail before touching anything when FINN is not there
    run = Path(req.run)
    onnx_path, exported, q = qx.exported(run, qx.NCHW_FILE)
    src = exported["source"]
    missing_vivado = vivado()
    conf = build_config(
        req.board.part, req.clock_ns, fps, with_vivado=missing_vivado is None, tie_rounding=tie_rounding
    )
    out = req.out_dir(BACKEND)
    clear_project(out)
    config_path, log = out / CONFIG_FILE, out / LOG_FILE
    write_json(config_path, conf)
    t = time.perf_counter()
    run_driver(
        ["--onnx", str(onnx_path.resolve()), "--config", str(config_path), "--out", str(out.resolve())],
        out,
        log,
        "build",
    )
    build_s = time.perf_counter() - t
    steps = json.loads((out / STEPS_FILE).read_text())["steps"]
    built = json.loads((out / "report" / BUILD_REPORT).read_text())
    summary = summarize(parse_finn_estimates(out / "report"), built, req.board, req.clock_ns, fps)

    x, idx = qx.sample_patterns(q, req.patterns, req.data)
    ref = qx.brevitas_outputs(q.encoder, x)
    t = time.perf_counter()
    got = execute(out, x)
    exec_s = time.perf_counter() - t
    check = qx.compare(got.reshape(ref.shape), ref, idx)
    check["patterns_per_second"] = round(len(x) / exec_s, 1) if exec_s > 0 else None
    check["indices"] = idx.tolist()
    check["exact_expected"] = bool(built.get("tie_rounding", {}).get("exact", False))

    skipped = [] if missing_vivado is None else list(VIVADO_STEPS)
    metrics = {
        "backend": BACKEND,
        "finn": built.get("versions", {}).get("finn"),
        "board": req.board.name,
        "part": req.board.part,
        "clock_ns": req.clock_ns,
        "target_fps": fps,
        "project": {
            "dir": str(out),
            "reports": str(out / "report"),
            "code": str(out / "build"),
            "config": str(config_path),
            "log": str(log),
            "emulation_model": str(out / built.get("emulation_model", "emulation.onnx")),
        },
        "steps": steps,
        "skipped_steps": skipped,
        "vivado": "used" if missing_vivado is None else f"skipped ({missing_vivado}): {', '.join(skipped)} need Vivado",
        **summary,
        "input": built.get("input"),
        "partition": built.get("partition"),
        "tie_rounding": built.get("tie_rounding", {"mode": "half_up", "exact": False}),
        "export": {"onnx": str(onnx_path), "source": src},
        "seconds": {"build": round(build_s, 3), "execute": round(exec_s, 3)},
        "check_label": "FINN Python execution",
        "bit_exact": check,
    }
    report = write_firmware_report(req, out, onnx_path, q, metrics, t0)
    if check["exact_expected"] and not check["exact"]:
        raise FirmwareMismatch(
            qx.mismatch_message(f"FINN's execution of {out / 'emulation.onnx'}", check) + "; see firmware.json"
        )
    return report


def format_summary(metrics: dict[str, Any], check: bool = True) -> str:
    """A few lines for the terminal: estimate, frame rate vs target, what limits it, the execution check."""
    e, t = metrics["estimate"], metrics["target"]
    r, p = e["resources"], e.get("utilization_percent") or {}

    def res(k: str, label: str) -> str:
        return f"{r.get(k, 0):,} {label}" + (f" ({p[k]:.1f}%)" if k in p else "")

    lines = [
        f"FINN estimate on {metrics['board']} at {1000 / metrics['clock_ns']:g} MHz: "
        f"{res('lut', 'LUT')}, {res('bram18', 'BRAM18')}, {res('dsp', 'DSP')}; slowest layer {e['slowest_layer']} "
        f"{e['max_cycles']:,} cycles = {e['estimated_fps']:,.0f} frames/s ({e['frame_interval_us']:.2f} us per frame)",
        f"  target {t['fps']:,.0f} frames/s ({t['cycle_budget']:,} cycles per frame): "
        + ("met" if t["met"] else f"not met: {t['limit']}; {t['meet_with']}"),
        f"  {metrics['vivado']}",
    ]
    if not check:
        return "\n".join(lines)
    c = metrics["bit_exact"]
    ties = metrics["tie_rounding"].get("mode", "half_up").replace("_", " ")
    same = c["patterns"] - c["mismatched_patterns"]
    lines.append(
        f"  FINN execution vs Brevitas: {same} of {c['patterns']} patterns identical "
        f"(max |diff| {c['max_abs_diff']:.3g}; ties rounded {ties})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m edgestem.firmware.finn RUN [--board B] [--target-fps F]``: the build from the shell."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgestem.firmware.finn", description=build_finn.__doc__)
    p.add_argument("run", type=Path)
    p.add_argument("--board", default="zcu104")
    p.add_argument("--clock-ns", type=float)
    p.add_argument("--target-fps", help="frames/s, a rate such as 87k, or a detector name [default: 4dcamera]")
    p.add_argument("--patterns", type=int, default=200)
    p.add_argument("--tie-rounding", choices=TIE_ROUNDING, default="half_even")
    a = p.parse_args(argv)
    try:
        target: float | str | None = a.target_fps
        if target is not None:
            from edgestem.targets.detectors import parse_rate

            target = parse_rate(target) or target
        m = build_finn(
            a.run,
            board=a.board,
            clock_ns=a.clock_ns,
            target_fps=target,
            patterns=a.patterns,
            tie_rounding=a.tie_rounding,
        )["metrics"]
    except EdgestemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {m['project']['dir']} ({sum(m['seconds'].values()):.0f} s)")
    print(format_summary(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "build",
    "build_config",
    "build_finn",
    "build_request",
    "default_target_fps",
    "execute",
    "finn_python",
    "finn_venv",
    "format_summary",
    "resolve_target_fps",
    "summarize",
    "vivado",
]
