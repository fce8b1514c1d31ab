"""Read synthesis and estimate reports of a run into one summary (``edgestem synth-report``).

Formats: Vivado/Vitis HLS ``<top>_csynth.xml``; Vivado ``report_utilization`` and
``report_timing_summary`` text; FINN's ``report/estimate_network_performance.json``,
``estimate_layer_resources.json``, ``estimate_layer_cycles.json`` and ``ooc_synth_and_timing.json``.
Where they are looked for: see ``collect``. Resources are always counted as LUT, FF, DSP, BRAM18
(block RAM in 18 Kb halves: a 36 Kb "Block RAM Tile" counts 2) and URAM.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from edgestem.errors import DataError

RESOURCES = ("lut", "ff", "dsp", "bram18", "uram")


# --- Vivado / Vitis HLS C synthesis -----------------------------------------------------------


def _text(root: Any, path: str) -> str | None:
    node = root.find(path)
    return None if node is None or node.text is None else node.text.strip()


def _number(text: str | None) -> float | None:
    """A report number; None for missing, 'undef', '-' or 'NA'."""
    if text is None:
        return None
    m = re.match(r"^\s*(-?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)", text)
    return float(m.group(1)) if m else None


def _int(text: str | None) -> int | None:
    value = _number(text)
    return None if value is None else int(round(value))


def _hls_resources(node: Any) -> dict[str, int | None]:
    if node is None:
        return {}
    values = {child.tag: child.text for child in node}
    return {
        "lut": _int(values.get("LUT")),
        "ff": _int(values.get("FF")),
        # Vivado HLS says DSP48E, Vitis HLS says DSP.
        "dsp": _int(values.get("DSP", values.get("DSP48E"))),
        "bram18": _int(values.get("BRAM_18K")),
        "uram": _int(values.get("URAM")),
    }


def parse_csynth_xml(path: Path) -> dict[str, Any]:
    """Latency, initiation interval, clocks and resources of one ``*_csynth.xml``."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"HLS report {path}: not valid XML ({exc}); re-run C synthesis") from None
    except FileNotFoundError:
        raise DataError(f"HLS report {path}: no such file") from None
    except OSError as exc:
        raise DataError(f"HLS report {path}: cannot read it ({exc.strerror})") from None
    perf = root.find("PerformanceEstimates")
    if perf is None:
        raise DataError(f"HLS report {path}: no PerformanceEstimates element; is it a csynth.xml report?")
    lat = "SummaryOfOverallLatency/"
    return {
        "file": str(path),
        "top": _text(root, "UserAssignments/TopModelName"),
        "part": _text(root, "UserAssignments/Part"),
        "target_clock_ns": _number(_text(root, "UserAssignments/TargetClockPeriod")),
        "clock_uncertainty_ns": _number(_text(root, "UserAssignments/ClockUncertainty")),
        "estimated_clock_ns": _number(_text(perf, "SummaryOfTimingAnalysis/EstimatedClockPeriod")),
        "latency_cycles": {
            "best": _int(_text(perf, lat + "Best-caseLatency")),
            "average": _int(_text(perf, lat + "Average-caseLatency")),
            "worst": _int(_text(perf, lat + "Worst-caseLatency")),
        },
        "interval_cycles": {
            "min": _int(_text(perf, lat + "Interval-min")),
            "max": _int(_text(perf, lat + "Interval-max")),
        },
        "resources": _hls_resources(root.find("AreaEstimates/Resources")),
        "available": _hls_resources(root.find("AreaEstimates/AvailableResources")),
    }


# --- Vivado report_utilization / report_timing_summary ----------------------------------------

# First-level rows of report_utilization (UltraScale names, then 7-series names).
_UTIL_ROWS = {
    "lut": ("CLB LUTs", "Slice LUTs"),
    "ff": ("CLB Registers", "Slice Registers"),
    "bram_tile": ("Block RAM Tile",),
    "dsp": ("DSPs",),
    "uram": ("URAM",),
}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_utilization(path: Path) -> dict[str, Any]:
    """Used and available LUT, FF, DSP, BRAM18, URAM of a Vivado ``report_utilization`` file."""
    text = _read(path, "utilization report")
    header = re.search(r"^\|\s*Design State\s*:\s*(.+?)\s*$", text, re.MULTILINE)
    device = re.search(r"^\|\s*Device\s*:\s*(\S+)", text, re.MULTILINE)
    used: dict[str, float] = {}
    avail: dict[str, float] = {}
    columns: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        if cells and cells[0] == "Site Type":
            columns = cells
            continue
        if columns is None or "Used" not in columns:
            continue
        name = cells[0].rstrip("*").strip()
        for key, names in _UTIL_ROWS.items():
            if key in used or name not in names or len(cells) != len(columns):
                continue
            u = _number(cells[columns.index("Used")])
            if u is None:
                continue
            used[key] = u
            if "Available" in columns:
                a = _number(cells[columns.index("Available")])
                if a is not None:
                    avail[key] = a
    if not used:
        raise DataError(f"utilization report {path}: no resource table found; is it from report_utilization?")

    def norm(d: dict[str, float]) -> dict[str, int | None]:
        tile = d.get("bram_tile")
        return {
            "lut": _round(d.get("lut")),
            "ff": _round(d.get("ff")),
            "dsp": _round(d.get("dsp")),
            "bram18": None if tile is None else int(round(2 * tile)),
            "uram": _round(d.get("uram")),
        }

    return {
        "file": str(path),
        "device": device.group(1) if device else None,
        "design_state": header.group(1) if header else None,
        "resources": norm(used),
        "available": norm(avail),
    }


def parse_timing_summary(path: Path) -> dict[str, Any]:
    """WNS, TNS, WHS, THS (ns) and the first clock's period from ``report_timing_summary``."""
    lines = _read(path, "timing report").splitlines()
    values: dict[str, float | None] = {}
    for i, line in enumerate(lines):
        if "WNS(ns)" in line and "TNS(ns)" in line:
            names = re.split(r"\s{2,}", line.strip())
            for row in lines[i + 1 : i + 4]:
                tokens = row.split()
                if tokens and not set(row.strip()) <= set("- ") and len(tokens) >= len(names):
                    values = {n: _number(t) for n, t in zip(names, tokens, strict=False)}
                    break
            break
    if not values:
        raise DataError(f"timing report {path}: no Design Timing Summary table; is it from report_timing_summary?")
    period = None
    for i, line in enumerate(lines):
        if re.match(r"^\s*Clock\s+Waveform\(ns\)\s+Period\(ns\)", line):
            for row in lines[i + 2 : i + 6]:
                m = re.match(r"^\s*(\S+)\s+\{[^}]*\}\s+([0-9.]+)", row)
                if m:
                    period = float(m.group(2))
                    break
            break
    wns, whs = values.get("WNS(ns)"), values.get("WHS(ns)")
    return {
        "file": str(path),
        "wns_ns": wns,
        "tns_ns": values.get("TNS(ns)"),
        "whs_ns": whs,
        "ths_ns": values.get("THS(ns)"),
        "clock_period_ns": period,
        "met": None if wns is None or whs is None else (wns >= 0 and whs >= 0),
    }


# --- FINN -------------------------------------------------------------------------------------


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(_read(path, what))
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _finn_resources(d: dict[str, Any]) -> dict[str, int | None]:
    return {
        "lut": _round(d.get("LUT")),
        "ff": _round(d.get("FF")),
        "dsp": _round(d.get("DSP")),
        "bram18": _round(d.get("BRAM_18K")),
        "uram": _round(d.get("URAM")),
    }


def parse_finn_estimates(report_dir: Path) -> dict[str, Any]:
    """FINN's estimate reports: cycles per layer, the slowest layer, throughput, latency, resources."""
    perf_path = report_dir / "estimate_network_performance.json"
    perf = _load_json(perf_path, "FINN report")
    try:
        max_cycles = int(perf["max_cycles"])
        fps = float(perf["estimated_throughput_fps"])
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"FINN report {perf_path}: needs max_cycles and estimated_throughput_fps; re-run the estimate step"
        ) from None
    out: dict[str, Any] = {
        "file": str(perf_path),
        "critical_path_cycles": _round(perf.get("critical_path_cycles")),
        "max_cycles": max_cycles,
        "max_cycles_node_name": perf.get("max_cycles_node_name"),
        "estimated_throughput_fps": fps,
        "estimated_latency_ns": perf.get("estimated_latency_ns"),
        # FINN computes fps = 1e9 / clock_ns / max_cycles, so the clock it assumed comes back out.
        "clock_ns": round(1e9 / (fps * max_cycles), 6) if fps > 0 and max_cycles > 0 else None,
        "resources": {},
        "layers": {},
    }
    res_path = report_dir / "estimate_layer_resources.json"
    if res_path.is_file():
        res = _load_json(res_path, "FINN report")
        out["resources"] = _finn_resources(res.get("total", {}))
        for name, d in res.items():
            if name != "total" and isinstance(d, dict):
                out["layers"].setdefault(name, {}).update(_finn_resources(d))
    cyc_path = report_dir / "estimate_layer_cycles.json"
    if cyc_path.is_file():
        for name, cycles in _load_json(cyc_path, "FINN report").items():
            out["layers"].setdefault(name, {})["cycles"] = _round(cycles)
    return out


def parse_finn_ooc(path: Path) -> dict[str, Any]:
    """FINN's own out-of-context synthesis result (``report/ooc_synth_and_timing.json``)."""
    d = _load_json(path, "FINN report")
    bram18 = None
    if d.get("BRAM") is not None:  # Block RAM tiles (36 Kb)
        bram18 = _round(2 * float(d["BRAM"]))
    elif d.get("BRAM_18K") is not None or d.get("BRAM_36K") is not None:
        bram18 = _round(float(d.get("BRAM_18K") or 0) + 2 * float(d.get("BRAM_36K") or 0))
    res = _finn_resources(d)
    res["bram18"] = bram18
    return {
        "file": str(path),
        "resources": res,
        "wns_ns": _number(None if d.get("WNS") is None else str(d["WNS"])),
        "clock_period_ns": _number(None if d.get("clk_period_ns") is None else str(d["clk_period_ns"])),
        "fmax_mhz": _number(None if d.get("fmax_mhz") is None else str(d["fmax_mhz"])),
    }


# --- helpers ----------------------------------------------------------------------------------


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        raise DataError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def _round(value: Any) -> int | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(round(f)) if math.isfinite(f) else None
