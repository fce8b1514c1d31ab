"""Report parsers: csynth.xml (Vitis and Vivado HLS), report_utilization (UltraScale+ and 7-series),
report_timing_summary, FINN's estimate and OOC JSON; malformed input gives one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgestem.errors import DataError
from edgestem.firmware import reports

FIX = Path(__file__).parent / "fixtures"


def test_vitis_csynth():
    r = reports.parse_csynth_xml(FIX / "myproject_csynth.xml")
    assert (r["top"], r["part"], r["target_clock_ns"], r["estimated_clock_ns"]) == (
        "myproject",
        "xczu7ev-ffvc1156-2-e",
        5.0,
        4.372,
    )
    assert r["clock_uncertainty_ns"] == 1.35
    assert r["latency_cycles"] == {"best": 4365, "average": 4365, "worst": 4365}
    assert r["interval_cycles"] == {"min": 4100, "max": 4100}
    assert r["resources"] == {"lut": 21540, "ff": 18233, "dsp": 36, "bram18": 20, "uram": 0}
    assert r["available"] == {"lut": 230400, "ff": 460800, "dsp": 1728, "bram18": 624, "uram": 96}


def test_vivado_hls_csynth_with_dsp48e_and_undef():
    r = reports.parse_csynth_xml(FIX / "legacy_csynth.xml")
    assert r["resources"]["dsp"] == 12 and r["available"]["dsp"] == 220  # DSP48E read as DSP
    assert r["latency_cycles"] == {"best": 1200, "average": None, "worst": None}
    assert r["interval_cycles"] == {"min": 1201, "max": None}
    assert r["resources"]["uram"] is None


def test_ultrascale_routed_utilization():
    r = reports.parse_utilization(FIX / "utilization_impl.rpt")
    assert (r["device"], r["design_state"]) == ("xczu7ev-ffvc1156-2-e", "Routed")
    # First-level rows only: "LUT as Logic" (17911) and "CLB" (3921) must not be taken for LUTs.
    assert r["resources"] == {"lut": 19873, "ff": 17210, "dsp": 36, "bram18": 20, "uram": 0}
    assert r["available"] == {"lut": 230400, "ff": 460800, "dsp": 1728, "bram18": 624, "uram": 96}


def test_7series_synth_utilization_half_tiles():
    r = reports.parse_utilization(FIX / "utilization_7series_synth.rpt")
    # "Slice LUTs*" (the synthesis footnote star) and 1.5 Block RAM tiles = 3 BRAM18.
    assert r["resources"] == {"lut": 5020, "ff": 2987, "dsp": 12, "bram18": 3, "uram": None}
    assert r["available"]["bram18"] == 280 and r["design_state"] == "Synthesized"


def test_timing_summary(tmp_path):
    r = reports.parse_timing_summary(FIX / "timing_impl.rpt")
    assert (r["wns_ns"], r["tns_ns"], r["whs_ns"], r["ths_ns"]) == (0.412, 0.0, 0.01, 0.0)
    assert r["clock_period_ns"] == 5.0 and r["met"] is True
    failing = tmp_path / "t.rpt"
    text = (FIX / "timing_impl.rpt").read_text()
    failing.write_text(text.replace("      0.412        0.000  ", "     -0.250      -12.731  "))
    r = reports.parse_timing_summary(failing)
    assert (r["wns_ns"], r["tns_ns"], r["met"]) == (-0.25, -12.731, False)


def test_finn_estimates():
    r = reports.parse_finn_estimates(FIX / "finn-report")
    assert (r["max_cycles"], r["critical_path_cycles"], r["max_cycles_node_name"]) == (98304, 226186, "MVAU_rtl_0")
    assert r["clock_ns"] == 10.0  # recovered from fps = 1e9 / clock / max_cycles
    assert r["resources"] == {"lut": 4541, "ff": None, "dsp": 1, "bram18": 6, "uram": 0}
    assert len(r["layers"]) == 10 and r["layers"]["MVAU_rtl_1"] == {
        "lut": 1204,
        "ff": None,
        "dsp": 0,
        "bram18": 2,
        "uram": 0,
        "cycles": 73728,
    }


def test_finn_estimates_without_layer_files(tmp_path):
    shutil.copy(FIX / "finn-report" / "estimate_network_performance.json", tmp_path)
    r = reports.parse_finn_estimates(tmp_path)
    assert r["layers"] == {} and r["resources"] == {} and r["max_cycles"] == 98304


def test_finn_ooc():
    r = reports.parse_finn_ooc(FIX / "finn-report" / "ooc_synth_and_timing.json")
    assert r["resources"] == {"lut": 4012, "ff": 5311, "dsp": 1, "bram18": 6, "uram": 0}  # 3 BRAM tiles
    assert (r["wns_ns"], r["clock_period_ns"]) == (1.234, 10.0)
    assert r["fmax_mhz"] == pytest.approx(1000 / 8.766)


@pytest.mark.parametrize(
    "parser,name,content,needle",
    [
        (reports.parse_csynth_xml, "a_csynth.xml", "<profile><Perf", "not valid XML"),
        (reports.parse_csynth_xml, "b_csynth.xml", "<profile><AreaEstimates/></profile>", "PerformanceEstimates"),
        (reports.parse_utilization, "u.rpt", "Copyright\n| Design : x\n", "no resource table"),
        (reports.parse_timing_summary, "t.rpt", "Timing Summary Report\n\nnothing\n", "Design Timing Summary"),
        (reports.parse_csynth_xml, "missing.xml", None, "no such file"),
    ],
)
def test_malformed_reports(tmp_path, parser, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=needle) as err:
        parser(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content,needle",
    [("{not json", "not valid JSON"), (json.dumps({"critical_path_cycles": 5}), "needs max_cycles")],
)
def test_malformed_finn_reports(tmp_path, content, needle):
    (tmp_path / "estimate_network_performance.json").write_text(content)
    with pytest.raises(DataError, match=needle):
        reports.parse_finn_estimates(tmp_path)
