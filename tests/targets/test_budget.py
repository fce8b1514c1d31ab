"""edgestem budget: the keep-up arithmetic, checked against numbers worked out by hand.

Fixture designs: hls4ml, II 4100 cycles at 5 ns (200 MHz), largest reuse factor 4, Vivado WNS +0.412 ns;
FINN, slowest layer MVAU_rtl_0 at 98304 cycles, 10 ns (100 MHz) recovered from its fps estimate.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgestem.cli import app
from edgestem.errors import ConfigError, DataError
from edgestem.targets.boards import load_board
from edgestem.targets.budget import budget
from edgestem.targets.throughput import copies_that_fit, finn_folding, hls4ml_reuse, verdict

runner = CliRunner()


def test_verdict_arithmetic():
    # 200 MHz / 4100 cycles = 48,780.49 patterns/s; the 4D Camera's 87 kHz leaves 2,298.85 cycles.
    v = verdict(4100, 5.0, 87000)
    assert v["achieved_fps"] == pytest.approx(48780.4878, rel=1e-9)
    assert v["cycles_per_frame_available"] == pytest.approx(2298.8506, rel=1e-7)
    assert v["frame_time_us"] == pytest.approx(11.4943, rel=1e-4)
    assert v["keeps_up"] is False
    assert v["speedup_needed"] == pytest.approx(1.7835)  # 87000 * 4100 / 2e8
    assert v["copies_needed"] == 2
    ok = verdict(4100, 5.0, 10000)  # EMPAD-G2
    assert ok["keeps_up"] is True and ok["speedup_needed"] == pytest.approx(0.205) and ok["copies_needed"] == 1
    # Exactly on the budget still keeps up: 2e8 / 50000 = 4000 cycles.
    assert verdict(4000, 5.0, 50000)["keeps_up"] is True
    assert verdict(4001, 5.0, 50000)["keeps_up"] is False


def test_finn_folding_per_layer():
    layers = {"MVAU_0": 98304, "MVAU_1": 73728, "SWG_1": 1156, "Pool_1": 1024}
    # 100 MHz / 87 kHz = 1149.43 -> 1149 cycles per pattern for every layer.
    f = finn_folding(layers, 10.0, 87000)
    assert f["cycle_budget"] == 1149
    # ceil(98304 / 1149) = ceil(85.56) = 86; ceil(73728 / 1149) = ceil(64.17) = 65; ceil(1156 / 1149) = 2
    assert f["layers_over_budget"] == {"MVAU_0": 86, "MVAU_1": 65, "SWG_1": 2}
    assert f["max_fold_factor"] == 86
    assert finn_folding(layers, 10.0, 1000) == {"cycle_budget": 100000, "layers_over_budget": {}, "max_fold_factor": 1}
    fast = finn_folding(layers, 10.0, 2e8)  # two patterns per clock cycle
    assert fast["cycle_budget"] == 0 and fast["max_fold_factor"] is None and "folding alone" in fast["note"]


def test_hls4ml_reuse():
    assert hls4ml_reuse(4, 1.7835) == {"reuse_factor": 4, "max_reuse_factor": 2}  # floor(2.2428)
    assert hls4ml_reuse(4, 0.205)["max_reuse_factor"] == 19  # floor(19.51): room to save resources
    assert hls4ml_reuse(4, 2.46)["max_reuse_factor"] == 1  # ARINA, 120 kHz: floor(1.626)
    slow = hls4ml_reuse(4, 20.5)  # Timepix3 at 1 us dwell: floor(0.195) = 0
    assert slow["max_reuse_factor"] is None and slow["copies_at_rf1"] == 6  # ceil(20.5 / 4 = 5.125)
    assert hls4ml_reuse(None, 3.0)["note"].endswith("must shrink 3x")
    assert hls4ml_reuse(None, 0.25)["note"].endswith("could grow up to 4x")


def test_copies_that_fit():
    zcu = load_board("zcu104")
    # LUT 230400 / 19873 = 11.59 is the scarcest (FF 26.8, DSP 48, BRAM18 31.2).
    assert copies_that_fit({"lut": 19873, "ff": 17210, "dsp": 36, "bram18": 20, "uram": 0}, zcu) == 11
    assert copies_that_fit({"lut": 19873}, load_board("xcvu9p-flga2104-2L-e")) is None


def _design(res, flow):
    (d,) = [d for d in res["designs"] if d["flow"] == flow]
    return d


def test_budget_of_a_run(report_run):
    res = budget(report_run, detector="4dcamera")
    hls, finn = _design(res, "hls4ml"), _design(res, "finn")
    assert (hls["ii_cycles"], hls["clock_ns"], hls["reuse_factor"]) == (4100, 5.0, 4)
    assert "timing met" in hls["clock_from"]
    (v,) = hls["verdicts"]
    assert v["keeps_up"] is False and v["hls4ml"]["max_reuse_factor"] == 2
    assert v["copies_fit_on_board"] == 11  # Vivado's implemented resources on the ZCU104
    assert finn["clock_ns"] == 10.0 and finn["latency_us"] == pytest.approx(2261.86)
    (v,) = finn["verdicts"]
    assert v["speedup_needed"] == pytest.approx(85.52448)  # 87000 * 98304 / 1e8
    assert v["finn"]["cycle_budget"] == 1149 and v["finn"]["max_fold_factor"] == 86
    # Layers over 1149 cycles of the fixture, each ceil(cycles / 1149):
    assert v["finn"]["layers_over_budget"] == {
        "MVAU_rtl_0": 86,
        "MVAU_rtl_1": 65,
        "MVAU_rtl_2": 33,
        "MVAU_rtl_3": 6,
        "ConvolutionInputGenerator_rtl_0": 4,
        "StreamingMaxPool_hls_0": 4,
        "ConvolutionInputGenerator_rtl_1": 2,
    }
    assert v["copies_fit_on_board"] == 50  # 230400 LUT / 4541
    saved = json.loads((report_run / "budget.json").read_text())
    assert saved["designs"][0]["verdicts"][0]["detector"] == "4dcamera"


def test_every_detector_by_default(report_run):
    res = budget(report_run)
    finn = _design(res, "finn")
    by_name = {v["detector"]: v for v in finn["verdicts"]}
    assert set(by_name) == set(res["detectors"]) and len(by_name) >= 5
    assert by_name["empad-g2"]["finn"]["layers_over_budget"] == {"MVAU_rtl_0": 10, "MVAU_rtl_1": 8, "MVAU_rtl_2": 4}


def test_failed_timing_slows_the_clock(report_run):
    timing = report_run / "hw" / "hls4ml" / "timing_impl.rpt"
    timing.write_text(timing.read_text().replace("      0.412        0.000  ", "     -0.250       -3.000  "))
    hls = _design(budget(report_run, detector="4dcamera"), "hls4ml")
    assert hls["clock_ns"] == pytest.approx(5.25) and "failed" in hls["clock_from"]
    # 87000 * 4100 * 5.25e-9 = 1.872675
    assert hls["verdicts"][0]["speedup_needed"] == pytest.approx(1.872675)


def test_board_and_clock_overrides(report_run):
    hls = _design(budget(report_run, detector="87kHz", board="pynq-z2"), "hls4ml")
    assert hls["clock_ns"] == 10.0 and "pynq-z2" in hls["clock_from"]
    v = hls["verdicts"][0]
    assert v["speedup_needed"] == pytest.approx(3.567)  # 87000 * 4100 / 1e8
    assert v["copies_fit_on_board"] == 2  # 53200 LUT / 19873
    finn = _design(budget(report_run, detector="1000", clock_ns=4.0), "finn")
    assert finn["verdicts"][0]["keeps_up"] is True and finn["achieved_fps"] == pytest.approx(2.5e8 / 98304)
    with pytest.raises(ConfigError, match="positive"):
        budget(report_run, clock_ns=-1.0)


def test_budget_needs_an_interval(run_factory):
    only_vivado = run_factory(hls4ml=False, finn=False)
    with pytest.raises(DataError, match="initiation interval"):
        budget(only_vivado)


def test_cli(report_run):
    r = runner.invoke(app, ["budget", str(report_run), "--detector", "empad-g2"])
    assert r.exit_code == 0, r.output
    assert "empad-g2" in r.output and "yes" in r.output and "NO" in r.output and "RF <= 19" in r.output
    r = runner.invoke(app, ["budget", str(report_run), "--detector", "k3"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "empad-g2" in r.output
