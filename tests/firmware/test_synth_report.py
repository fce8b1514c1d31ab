"""edgestem synth-report: report discovery in a run, the summary rows, utilisation of the board, JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgestem.cli import app
from edgestem.errors import DataError
from edgestem.firmware.synth_report import collect, synth_report

runner = CliRunner()


def _rows(result):
    return {(r["flow"], r["source"]): r for r in result["summary"]}


def test_collects_every_report(report_run):
    found = collect(report_run)
    assert found["hls4ml"]["csynth"]["interval_cycles"]["max"] == 4100
    assert found["hls4ml"]["vivado"]["stage"] == "impl"
    assert found["hls4ml"]["vivado"]["timing"]["wns_ns"] == 0.412
    assert found["hls4ml"]["reuse_factor"]["layers"] == {"conv1": 4, "conv2": 2, "dense": 1}
    assert found["hls4ml"]["reuse_factor"]["max"] == 4  # read past hls4ml's !!python tags
    assert found["finn"]["estimate"]["max_cycles"] == 98304 and "vivado" not in found["finn"]


def test_summary_numbers(report_run):
    res = synth_report(report_run)
    assert res["board"]["name"] == "zcu104" and "xczu7ev-ffvc1156-2-e" in res["board_from"]
    rows = _rows(res)
    hls = rows[("hls4ml", "HLS estimate")]
    assert (hls["clock_ns"], hls["latency_cycles"], hls["ii_cycles"]) == (5.0, 4365, 4100)
    assert hls["latency_us"] == pytest.approx(21.825)
    assert hls["fps"] == pytest.approx(1e9 / (5 * 4100))
    assert hls["utilization_pct"]["lut"] == pytest.approx(100 * 21540 / 230400)
    finn = rows[("finn", "FINN estimate")]
    assert (finn["clock_ns"], finn["latency_cycles"], finn["ii_cycles"]) == (10.0, 226186, 98304)
    assert finn["latency_us"] == pytest.approx(2261.86) and finn["fps"] == pytest.approx(1e8 / 98304)
    assert finn["utilization_pct"]["bram18"] == pytest.approx(100 * 6 / 624)
    assert "ff" not in finn["utilization_pct"]  # FINN does not estimate flip-flops
    viv = rows[("hls4ml", "Vivado implementation")]
    assert (viv["clock_ns"], viv["wns_ns"], viv["resources"]["lut"]) == (5.0, 0.412, 19873)
    assert viv["utilization_pct"]["lut"] == pytest.approx(100 * 19873 / 230400)
    saved = json.loads((report_run / "synth-report.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))


def test_explicit_board_sets_the_utilisation(report_run):
    rows = _rows(synth_report(report_run, board="pynq-z2"))
    assert rows[("hls4ml", "HLS estimate")]["utilization_pct"]["lut"] == pytest.approx(100 * 21540 / 53200)
    assert rows[("finn", "FINN estimate")]["utilization_pct"]["lut"] == pytest.approx(100 * 4541 / 53200)
    assert rows[("hls4ml", "Vivado implementation")]["utilization_pct"]["dsp"] == pytest.approx(100 * 36 / 220)


def test_board_of_the_last_synthesis_wins_over_the_part(report_run):
    from edgestem.atomic import write_json
    from edgestem.targets.boards import load_board

    write_json(report_run / "hw" / "board.json", load_board("u250").model_dump(mode="json"))
    res = synth_report(report_run)
    assert res["board"]["name"] == "u250" and res["board_from"].endswith("board.json")


def test_finn_only_run_has_no_board(run_factory):
    run = run_factory(hls4ml=False, vivado=False)
    res = synth_report(run)
    assert res["board"] is None and list(_rows(res)) == [("finn", "FINN estimate")]
    assert _rows(res)[("finn", "FINN estimate")]["utilization_pct"] == {}


def test_missing_reports_say_what_to_run(run_factory, tmp_path):
    empty = run_factory(hls4ml=False, vivado=False, finn=False)
    with pytest.raises(DataError, match="scripts/synth.sh"):
        collect(empty)
    with pytest.raises(DataError, match="does not exist"):
        collect(tmp_path / "nope")


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli(report_run, tmp_path, run_factory):
    out = tmp_path / "sr.json"
    r = runner.invoke(app, ["synth-report", str(report_run), "--json", str(out)])
    assert r.exit_code == 0, r.output
    for needle in ("HLS estimate", "FINN estimate", "Vivado implementation", "19,873 (8.6%)", "0.412", "48,780"):
        assert needle in r.output
    assert json.loads(out.read_text())["board"]["part"] == "xczu7ev-ffvc1156-2-e"
    assert not list(tmp_path.glob(".sr.tmp-*"))
    r = runner.invoke(app, ["synth-report", str(report_run), "--board", "zcu102"])
    _one_line_error(r, "zcu102", "pynq-z2, u250, zcu104")
    bad = report_run / "firmware" / "hls4ml" / "myproject_prj" / "solution1" / "syn" / "report" / "myproject_csynth.xml"
    bad.write_text("<profile>")
    _one_line_error(runner.invoke(app, ["synth-report", str(report_run)]), "myproject_csynth.xml", "not valid XML")


@pytest.mark.parametrize("cmd", ["synth-report", "budget"])
def test_help(cmd):
    r = runner.invoke(app, [cmd, "--help"])
    assert r.exit_code == 0 and "--board" in r.output and "--json" in r.output


def test_cli_without_reports(run_factory):
    empty = run_factory(hls4ml=False, vivado=False, finn=False)
    _one_line_error(runner.invoke(app, ["synth-report", str(empty)]), "no synthesis or estimate reports")
