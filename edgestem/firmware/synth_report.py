"""``edgestem synth-report``: find a run's synthesis and estimate reports, summarise them, write JSON.

Where reports are looked for (first found wins, per kind):

- hls4ml C synthesis: ``RUN/hw/hls4ml/csynth.xml`` (copied there by ``hw/``), else
  ``RUN/firmware/hls4ml/<project>_prj/<solution>/syn/report/<project>_csynth.xml``.
- hls4ml Vivado: ``RUN/hw/hls4ml/{utilization,timing}_impl.rpt``, else ``..._synth.rpt``, else
  hls4ml's own ``RUN/firmware/hls4ml/vivado_synth.rpt`` (utilisation only).
- FINN estimates: ``RUN/firmware/finn/report/estimate_*.json``; FINN's own out-of-context result
  ``report/ooc_synth_and_timing.json``; Vivado from ``hw/``: ``RUN/hw/finn/{utilization,timing}_*.rpt``.
- Open-source RTL (``edgestem firmware --backend rtl``): yosys counts ``RUN/firmware/rtl/yosys/yosys.json``
  (written by ``--yosys``), latency from ``RUN/firmware/rtl/firmware.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgestem.errors import ConfigError, DataError
from edgestem.firmware import reports
from edgestem.rundir import firmware_dir
from edgestem.targets.boards import Board, board_for_part, load_board

STAGES = ("impl", "synth")


def hls4ml_project_name(hls_dir: Path) -> str | None:
    """The top function / project name from hls4ml's ``project.tcl``."""
    tcl = hls_dir / "project.tcl"
    if not tcl.is_file():
        return None
    m = re.search(r'^\s*set\s+project_name\s+"?([A-Za-z_][A-Za-z0-9_]*)"?', tcl.read_text(), re.MULTILINE)
    return m.group(1) if m else None


def _find_csynth(run: Path) -> Path | None:
    copied = run / "hw" / "hls4ml" / "csynth.xml"
    if copied.is_file():
        return copied
    hls_dir = firmware_dir(run, "hls4ml")
    name = hls4ml_project_name(hls_dir)
    if name is None:
        return None
    found = sorted(hls_dir.glob(f"{name}_prj/*/syn/report/{name}_csynth.xml"))
    return found[0] if found else None


def _vivado(out_dir: Path) -> dict[str, Any] | None:
    for stage in STAGES:
        util = out_dir / f"utilization_{stage}.rpt"
        if util.is_file():
            timing = out_dir / f"timing_{stage}.rpt"
            return {
                "stage": stage,
                "utilization": reports.parse_utilization(util),
                "timing": reports.parse_timing_summary(timing) if timing.is_file() else None,
            }
    return None


def reuse_factors(hls_dir: Path) -> dict[str, Any] | None:
    """Reuse factors from hls4ml's ``hls4ml_config.yml`` (model level and per layer), if written."""
    path = hls_dir / "hls4ml_config.yml"
    if not path.is_file():
        return None
    import yaml

    class Lenient(yaml.SafeLoader):
        """hls4ml dumps Python objects (the source model, tuples): read them as nothing."""

    Lenient.add_multi_constructor("", lambda loader, suffix, node: None)
    try:
        cfg = yaml.load(path.read_text(), Loader=Lenient)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise DataError(f"hls4ml config {path}: not readable YAML ({str(exc).splitlines()[0]})") from None
    hls = (cfg or {}).get("HLSConfig") or {}
    model_rf = (hls.get("Model") or {}).get("ReuseFactor")
    layers = {
        name: d["ReuseFactor"]
        for name, d in (hls.get("LayerName") or {}).items()
        if isinstance(d, dict) and isinstance(d.get("ReuseFactor"), int)
    }
    values = [v for v in [model_rf, *layers.values()] if isinstance(v, int)]
    return {"file": str(path), "model": model_rf, "layers": layers, "max": max(values) if values else None}


def collect(run: Path) -> dict[str, Any]:
    """Every report found under ``run``; a one-line error saying what to run when there is none."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run directory {run} does not exist")
    found: dict[str, Any] = {}
    hls: dict[str, Any] = {}
    csynth = _find_csynth(run)
    if csynth is not None:
        hls["csynth"] = reports.parse_csynth_xml(csynth)
    viv = _vivado(run / "hw" / "hls4ml")
    own = firmware_dir(run, "hls4ml") / "vivado_synth.rpt"
    if viv is None and own.is_file():
        viv = {"stage": "synth", "utilization": reports.parse_utilization(own), "timing": None}
    if viv is not None:
        hls["vivado"] = viv
    if hls:
        rf = reuse_factors(firmware_dir(run, "hls4ml"))
        if rf is not None:
            hls["reuse_factor"] = rf
        found["hls4ml"] = hls
    finn: dict[str, Any] = {}
    report_dir = firmware_dir(run, "finn") / "report"
    if (report_dir / "estimate_network_performance.json").is_file():
        finn["estimate"] = reports.parse_finn_estimates(report_dir)
    if (report_dir / "ooc_synth_and_timing.json").is_file():
        finn["ooc"] = reports.parse_finn_ooc(report_dir / "ooc_synth_and_timing.json")
    viv = _vivado(run / "hw" / "finn")
    if viv is not None:
        finn["vivado"] = viv
    if finn:
        found["finn"] = finn
    rtl = _rtl(run)
    if rtl is not None:
        found["rtl"] = rtl
    if not found:
        raise DataError(
            f"no synthesis or estimate reports under {run}/firmware or {run}/hw: run scripts/synth.sh {run} "
            "(needs Vivado / Vitis HLS) or a FINN build with estimate reports into firmware/finn/report/"
        )
    return found


def _rtl(run: Path) -> dict[str, Any] | None:
    """yosys counts of the generated RTL and its latency (firmware.json), if ``--yosys`` ran."""
    import json

    out = firmware_dir(run, "rtl")
    stat = out / "yosys" / "yosys.json"
    if not stat.is_file():
        return None
    fw = out / "firmware.json"
    metrics = json.loads(fw.read_text())["metrics"] if fw.is_file() else {}
    return {
        "yosys": json.loads(stat.read_text()),
        "latency_cycles": metrics.get("latency_cycles"),
        "clock_ns": metrics.get("clock_ns"),
    }


def _parts(found: dict[str, Any]) -> list[str]:
    parts = []
    hls = found.get("hls4ml", {})
    if "csynth" in hls:
        parts.append(hls["csynth"]["part"])
    for flow in found.values():
        if "vivado" in flow:
            parts.append(flow["vivado"]["utilization"]["device"])
    return [p for p in parts if p]


def choose_board(run: Path, found: dict[str, Any], spec: str | None) -> tuple[Board | None, str | None]:
    """The board for utilisation and clocks: ``--board``, else ``RUN/hw/board.json``, else the reports' part."""
    if spec:
        return load_board(spec), "--board"
    saved = run / "hw" / "board.json"
    if saved.is_file():
        import json

        try:
            return Board(**json.loads(saved.read_text())), str(saved)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"board file {saved}: unreadable ({exc}); delete it or re-run scripts/synth.sh") from None
    for part in _parts(found):
        board = board_for_part(part)
        if board is not None:
            return board, f"part {part} in the reports"
    return None, None


def _row(flow: str, source: str, **values: Any) -> dict[str, Any]:
    row = {
        "flow": flow,
        "source": source,
        "clock_ns": None,
        "latency_cycles": None,
        "latency_us": None,
        "ii_cycles": None,
        "fps": None,
        "wns_ns": None,
        "resources": {},
        "utilization_pct": {},
    }
    row.update(values)
    clock, lat, ii = row["clock_ns"], row["latency_cycles"], row["ii_cycles"]
    if clock and lat is not None:
        row["latency_us"] = lat * clock / 1000.0
    if clock and ii and row["fps"] is None:
        row["fps"] = 1e9 / (clock * ii)
    return row


def _util(row: dict[str, Any], available: dict[str, Any]) -> None:
    for key in reports.RESOURCES:
        used, avail = row["resources"].get(key), available.get(key)
        if used is not None and avail:
            row["utilization_pct"][key] = 100.0 * used / avail


def summarize(found: dict[str, Any], board: Board | None, board_is_explicit: bool = False) -> list[dict[str, Any]]:
    """One row per report: clock, latency, II, frames/s, resources, slack and utilisation."""
    board_res = board.resources.model_dump() if board is not None and board.resources is not None else {}
    rows = []
    hls = found.get("hls4ml", {})
    hls_clock = None
    if "csynth" in hls:
        c = hls["csynth"]
        hls_clock = c["target_clock_ns"]
        row = _row(
            "hls4ml",
            "HLS estimate",
            clock_ns=hls_clock,
            latency_cycles=c["latency_cycles"]["worst"],
            ii_cycles=c["interval_cycles"]["max"],
            resources=c["resources"],
        )
        rows.append((row, c["available"]))
    finn = found.get("finn", {})
    if "estimate" in finn:
        e = finn["estimate"]
        row = _row(
            "finn",
            "FINN estimate",
            clock_ns=e["clock_ns"],
            latency_cycles=e["critical_path_cycles"],
            ii_cycles=e["max_cycles"],
            fps=e["estimated_throughput_fps"],
            resources=e["resources"],
        )
        rows.append((row, {}))
    if "ooc" in finn:
        o = finn["ooc"]
        rows.append(
            (
                _row(
                    "finn",
                    "FINN OOC place & route",
                    clock_ns=o["clock_period_ns"],
                    wns_ns=o["wns_ns"],
                    resources=o["resources"],
                ),
                {},
            )
        )
    rtl = found.get("rtl")
    if rtl is not None:
        y = rtl["yosys"]
        row = _row(
            "rtl",
            f"yosys synth_xilinx ({y['family']})",
            clock_ns=rtl["clock_ns"],
            latency_cycles=rtl["latency_cycles"],
            ii_cycles=rtl["latency_cycles"],  # layer-sequential: one pattern at a time
            resources={k: y["resources"][k] for k in reports.RESOURCES},
        )
        rows.append((row, {}))
    for flow, data in (("hls4ml", hls), ("finn", finn)):
        if "vivado" not in data:
            continue
        v = data["vivado"]
        timing = v["timing"] or {}
        clock = timing.get("clock_period_ns") or (hls_clock if flow == "hls4ml" else None)
        label = "Vivado implementation" if v["stage"] == "impl" else "Vivado synthesis"
        row = _row(flow, label, clock_ns=clock, wns_ns=timing.get("wns_ns"), resources=v["utilization"]["resources"])
        rows.append((row, v["utilization"]["available"]))
    out = []
    for row, own in rows:
        # An explicit --board wins; otherwise the part the report was made for; otherwise the guessed board.
        available = board_res if board_is_explicit and board_res else (own if any(own.values()) else board_res)
        _util(row, available)
        out.append(row)
    return out


def board_part(spec: str | None) -> str | None:
    """The part of a ``--board`` value (preset, YAML or part), or None without one."""
    return None if not spec else load_board(spec).part


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary rows as a fixed-width text table; resources carry their utilisation in %."""
    head = ["flow", "source", "clock MHz", "latency cyc", "latency us", "II cyc", "frames/s"]
    head += ["LUT", "FF", "DSP", "BRAM18", "URAM", "WNS ns"]
    table = [head]
    for r in rows:
        cells = [
            r["flow"],
            r["source"],
            _fmt(None if not r["clock_ns"] else 1000.0 / r["clock_ns"], ".1f"),
            _fmt(r["latency_cycles"]),
            _fmt(r["latency_us"], ",.2f"),
            _fmt(r["ii_cycles"]),
            _fmt(r["fps"]),
        ]
        for key in reports.RESOURCES:
            used, pct = r["resources"].get(key), r["utilization_pct"].get(key)
            cells.append(_fmt(used) + ("" if pct is None else f" ({pct:.1f}%)"))
        cells.append(_fmt(r["wns_ns"], ".3f"))
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in table
    ]
    return "\n".join(line.rstrip() for line in lines)


def synth_report(
    run: Path, board: str | None = None, json_out: Path | None = None, yosys: bool = False
) -> dict[str, Any]:
    """Collect, summarise and write ``json_out`` (default ``RUN/synth-report.json``); returns the report.

    ``yosys``: first synthesise the generated RTL (``RUN/firmware/rtl``) with yosys (:mod:`edgestem.firmware.yosys`).
    """
    from edgestem.atomic import write_json
    from edgestem.runinfo import versions

    run = Path(run)
    if yosys:
        from edgestem.firmware.rtl import load_project
        from edgestem.firmware.yosys import synthesize

        rtl_dir, rtl_metrics = load_project(run)
        synthesize(rtl_dir, part=board_part(board) or rtl_metrics.get("part"))
    found = collect(run)
    chosen, why = choose_board(run, found, board)
    result = {
        "run": str(run),
        "board": None if chosen is None else chosen.model_dump(mode="json"),
        "board_from": why,
        "reports": found,
        "summary": summarize(found, chosen, board_is_explicit=board is not None),
        "versions": versions(),
    }
    out = Path(json_out) if json_out is not None else run / "synth-report.json"
    write_json(out, result)
    result["json"] = str(out)
    return result
