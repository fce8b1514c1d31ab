"""``edgestem budget``: does the encoder keep up with the detector, and what would it take if not.

It reads the synthesis and estimate reports of a run (:func:`edgestem.firmware.synth_report.collect`,
nothing is re-synthesised), picks the clock the design really runs at and judges each design against
each detector with the arithmetic of :mod:`edgestem.targets.throughput`. When Vivado timing failed
(WNS < 0), the clock that closes is 1 / (T - WNS): the budget uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgestem.firmware.synth_report import choose_board, collect
from edgestem.targets.boards import Board
from edgestem.targets.detectors import Detector, load_detectors, resolve_detector
from edgestem.targets.throughput import copies_that_fit, finn_folding, hls4ml_reuse, verdict


def _clock(nominal_ns: float, wns_ns: float | None) -> tuple[float, str]:
    """The clock the design runs at: the target, or the slower one that closes when timing failed."""
    if wns_ns is None:
        return nominal_ns, "target clock, timing not checked by Vivado"
    if wns_ns < 0:
        return nominal_ns - wns_ns, f"timing failed by {-wns_ns:.3f} ns: {nominal_ns:g} ns target slowed"
    return nominal_ns, f"target clock, timing met: WNS {wns_ns:.3f} ns"


def designs(
    found: dict[str, Any], clock_ns: float | None = None, clock_label: str = "--clock-ns"
) -> list[dict[str, Any]]:
    """The designs to judge: II, clock and resources of each flow, from the best report available.

    ``clock_ns`` replaces the clock of the reports (then timing slack, which belongs to that clock, is ignored).
    """
    out = []
    hls = found.get("hls4ml", {})
    if "csynth" in hls and hls["csynth"]["interval_cycles"]["max"]:
        c = hls["csynth"]
        viv = hls.get("vivado")
        wns = (viv["timing"] or {}).get("wns_ns") if viv else None
        nominal = clock_ns or c["target_clock_ns"]
        clk, why = _clock(nominal, None if clock_ns else wns)
        out.append(
            {
                "flow": "hls4ml",
                "ii_cycles": c["interval_cycles"]["max"],
                "latency_cycles": c["latency_cycles"]["worst"],
                "clock_ns": clk,
                "clock_from": clock_label if clock_ns else why,
                "resources": viv["utilization"]["resources"] if viv else c["resources"],
                "reuse_factor": (hls.get("reuse_factor") or {}).get("max"),
            }
        )
    finn = found.get("finn", {})
    if "estimate" in finn:
        e = finn["estimate"]
        viv = finn.get("vivado")
        wns = (viv["timing"] or {}).get("wns_ns") if viv else (finn.get("ooc") or {}).get("wns_ns")
        nominal = clock_ns or e["clock_ns"]
        clk, why = _clock(nominal, None if clock_ns else wns)
        layers = {k: v["cycles"] for k, v in e["layers"].items() if v.get("cycles") is not None}
        if not layers:
            layers = {e["max_cycles_node_name"] or "slowest layer": e["max_cycles"]}
        out.append(
            {
                "flow": "finn",
                "ii_cycles": e["max_cycles"],
                "latency_cycles": e["critical_path_cycles"],
                "clock_ns": clk,
                "clock_from": clock_label if clock_ns else why,
                "resources": viv["utilization"]["resources"] if viv else e["resources"],
                "layer_cycles": layers,
                "slowest_layer": e["max_cycles_node_name"],
            }
        )
    return out


def judge(design: dict[str, Any], detector: Detector, board: Board | None) -> dict[str, Any]:
    """The verdict of one design against one detector, with what it would take to keep up."""
    v = verdict(design["ii_cycles"], design["clock_ns"], detector.frame_rate_hz)
    v["detector"] = detector.name
    if design["flow"] == "finn":
        v["finn"] = finn_folding(design["layer_cycles"], design["clock_ns"], detector.frame_rate_hz)
    else:
        v["hls4ml"] = hls4ml_reuse(design.get("reuse_factor"), v["speedup_needed"])
    v["copies_fit_on_board"] = copies_that_fit(design["resources"], board)
    return v


def budget(
    run: Path,
    detector: str | None = None,
    board: str | None = None,
    clock_ns: float | None = None,
    json_out: Path | None = None,
) -> dict[str, Any]:
    """Judge every design of ``run`` against one detector (or all of the table); write JSON."""
    from edgestem.atomic import write_json
    from edgestem.errors import DataError

    run = Path(run)
    found = collect(run)
    chosen, why = choose_board(run, found, board)
    if clock_ns is not None and clock_ns <= 0:
        from edgestem.errors import ConfigError

        raise ConfigError(f"--clock-ns {clock_ns}: must be positive")
    label = "--clock-ns"
    if clock_ns is None and board is not None and chosen is not None:
        clock_ns, label = chosen.clock_ns, f"clock of board {chosen.name}"  # an explicit board brings its clock
    dets = [resolve_detector(detector)] if detector else list(load_detectors().values())
    ds = designs(found, clock_ns, label)
    if not ds:
        raise DataError(
            f"no initiation interval in the reports under {run}: budget needs an HLS csynth report "
            "(scripts/synth.sh RUN --steps csynth) or FINN's estimate_network_performance.json"
        )
    for d in ds:
        d["latency_us"] = None if d["latency_cycles"] is None else d["latency_cycles"] * d["clock_ns"] / 1000.0
        d["achieved_fps"] = 1e9 / d["clock_ns"] / d["ii_cycles"]
        d["verdicts"] = [judge(d, det, chosen) for det in dets]
    result = {
        "run": str(run),
        "board": None if chosen is None else chosen.model_dump(mode="json"),
        "board_from": why,
        "detectors": {d.name: d.model_dump(mode="json") for d in dets},
        "designs": ds,
    }
    out = Path(json_out) if json_out is not None else run / "budget.json"
    write_json(out, result)
    result["json"] = str(out)
    return result


def format_budget(result: dict[str, Any]) -> str:
    """The verdicts as a readable table, then one line per design saying what it would take."""
    lines = []
    for d in result["designs"]:
        lat = "-" if d["latency_us"] is None else f"{d['latency_us']:,.2f} us"
        fit = d["verdicts"][0]["copies_fit_on_board"] if d["verdicts"] else None
        board = "" if fit is None else f"; {fit} copies of it fit on {result['board']['name']}"
        lines.append(
            f"{d['flow']}: II {d['ii_cycles']:,} cycles at {1000 / d['clock_ns']:.1f} MHz ({d['clock_from']}) = "
            f"{d['achieved_fps']:,.0f} patterns/s, latency {lat}{board}"
        )
        head = ["detector", "rate Hz", "frame us", "cycles/frame", "keeps up", "speed-up", "to keep up"]
        table = [head]
        for v in d["verdicts"]:
            table.append(
                [
                    v["detector"],
                    f"{v['rate_hz']:,.0f}",
                    f"{v['frame_time_us']:.2f}",
                    f"{v['cycles_per_frame_available']:,.1f}",
                    "yes" if v["keeps_up"] else "NO",
                    f"{v['speedup_needed']:.3g}x",
                    _advice(v),
                ]
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for r in table:
            cells = [c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
            lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _advice(v: dict[str, Any]) -> str:
    if "finn" in v:
        f = v["finn"]
        if f["max_fold_factor"] is None:
            return f["note"]
        if v["keeps_up"] or not f["layers_over_budget"]:
            return f"folding fine (every layer <= {f['cycle_budget']:,} cycles)"
        n = len(f["layers_over_budget"])
        return (
            f"unfold {n} layer{'s' if n > 1 else ''} to <= {f['cycle_budget']:,} cycles: "
            f"up to {f['max_fold_factor']}x more PE*SIMD"
        )
    h = v["hls4ml"]
    if h["reuse_factor"] is None:
        return h["note"]
    if h["max_reuse_factor"] is None:
        return f"RF 1 too slow: {h['copies_at_rf1']} parallel copies at RF 1"
    if v["keeps_up"]:
        return f"RF {h['reuse_factor']} fine; RF <= {h['max_reuse_factor']} still keeps up"
    return f"RF {h['reuse_factor']} -> <= {h['max_reuse_factor']}"
