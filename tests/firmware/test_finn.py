"""edgestem firmware --backend finn: build config, folding arithmetic, reports, errors; the real FINN build.

The host side is tested without FINN (its steps on qonnx graphs, the arithmetic on report fixtures,
the failure messages with a stand-in driver). Tests marked ``finn`` run FINN in ``.venv-finn``
(``scripts/setup-finn.sh``) on the tiny QAT run and are skipped when that environment is missing.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qonnx")

from edgestem.errors import ConfigError, EdgestemError, ToolMissingError  # noqa: E402
from edgestem.firmware import finn as backend  # noqa: E402
from edgestem.firmware import finn_driver as driver  # noqa: E402
from edgestem.firmware.registry import get, names  # noqa: E402
from edgestem.firmware.reports import parse_finn_estimates  # noqa: E402
from edgestem.targets.boards import load_board  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
HAVE_FINN = (backend.finn_venv() / "bin" / "python").is_file()
needs_finn = pytest.mark.skipif(
    not HAVE_FINN, reason=f"FINN environment {backend.finn_venv()} missing: scripts/setup-finn.sh"
)


def test_registry_and_the_driver_stays_out_of_the_host():
    assert "finn" in names() and "finn_driver" not in names() and get("finn") is backend.build
    # Importing the driver (the registry does) must not import FINN or QONNX into edgestem's process.
    code = "import sys, edgestem.firmware.finn_driver; print('finn' in sys.modules, 'qonnx' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"]


# --- configuration and arithmetic ---------------------------------------------------------------


def test_build_config_steps_target_and_tie_rounding():
    c = backend.build_config("xczu7ev-ffvc1156-2-e", 5.0, 86999.5)
    assert c["target_fps"] == 87000 and c["clock_ns"] == 5.0 and c["fpga_part"] == "xczu7ev-ffvc1156-2-e"
    assert c["steps"][0] == "edgestem_integer_input" and c["steps"][-1] == "step_hw_codegen"
    assert c["steps"].index("edgestem_round_half_even") < c["steps"].index("step_convert_to_hw")
    assert "step_generate_estimate_reports" in c["steps"] and not c["vivado"]
    v = backend.build_config("xczu7ev-ffvc1156-2-e", 5.0, 1000, with_vivado=True)
    assert v["vivado"] and v["steps"][-3:] == list(backend.VIVADO_STEPS) and "step_hw_codegen" not in v["steps"]
    up = backend.build_config("xczu7ev-ffvc1156-2-e", 5.0, 1000, tie_rounding="half_up")
    assert "edgestem_round_half_even" not in up["steps"]
    with pytest.raises(ConfigError, match="tie rounding 'down'"):
        backend.build_config("xczu7ev-ffvc1156-2-e", 5.0, 1000, tie_rounding="down")


def test_target_fps_defaults_to_the_4d_camera_and_takes_rates_and_detectors():
    assert backend.default_target_fps() == backend.resolve_target_fps(None) == 87000
    assert backend.resolve_target_fps("empad-g2") == 10000 and backend.resolve_target_fps("1MHz") == 1e6
    assert backend.resolve_target_fps(45000) == 45000
    with pytest.raises(ConfigError, match="must be positive"):
        backend.resolve_target_fps(0)


def _estimates(layers, clock_ns=5.0):
    """A parse_finn_estimates result for per-layer (cycles, LUT, BRAM18, DSP)."""
    slow = max(layers, key=lambda k: layers[k][0])
    cycles = layers[slow][0]
    return {
        "max_cycles": cycles,
        "max_cycles_node_name": slow,
        "critical_path_cycles": sum(v[0] for v in layers.values()),
        "estimated_throughput_fps": 1e9 / clock_ns / cycles,
        "estimated_latency_ns": sum(v[0] for v in layers.values()) * clock_ns,
        "resources": {
            "lut": sum(v[1] for v in layers.values()),
            "ff": None,
            "bram18": sum(v[2] for v in layers.values()),
            "dsp": sum(v[3] for v in layers.values()),
            "uram": 0,
        },
        "layers": {k: {"cycles": v[0], "lut": v[1], "bram18": v[2], "dsp": v[3]} for k, v in layers.items()},
    }


def test_summary_of_an_input_bound_design_needs_copies():
    # The default encoder's shape: conv1's sliding window takes one pixel of a 66 x 66 padded frame per cycle.
    est = _estimates({"SWU_0": (4358, 332, 0, 0), "MVAU_0": (4096, 0, 12, 18), "MVAU_1": (4096, 0, 48, 72)})
    build = {
        "layers": {
            "SWU_0": {"op_type": "ConvolutionInputGenerator_rtl", "SIMD": 1, "max_SIMD": 1, "parallel_window": 1},
            "MVAU_0": {"op_type": "MVAU_rtl", "PE": 8, "SIMD": 9, "max_PE": 8, "max_SIMD": 9, "layer": "conv1"},
            "MVAU_1": {"op_type": "MVAU_rtl", "PE": 4, "SIMD": 72, "max_PE": 16, "max_SIMD": 72, "layer": "conv2"},
        }
    }
    s = backend.summarize(est, build, load_board("zcu104"), 5.0, 87000)
    e, t = s["estimate"], s["target"]
    assert e["resources"] == {"lut": 332, "bram18": 60, "dsp": 90, "uram": 0}
    assert e["utilization_percent"]["dsp"] == round(100 * 90 / 1728, 2)
    assert e["estimated_fps"] == pytest.approx(45892.6, abs=0.1) and e["frame_interval_us"] == pytest.approx(21.79)
    assert t["cycle_budget"] == 2298 and not t["met"] and t["copies_needed"] == 2
    assert t["layers_over_budget"] == {"SWU_0": 2, "MVAU_0": 2, "MVAU_1": 2}
    assert t["layers_at_max_parallelism"] == ["SWU_0", "MVAU_0"]  # MVAU_1 could still unfold
    assert t["resources_for_target"] == {"lut": 664, "bram18": 120, "dsp": 180, "uram": 0} and t["within_aim"]
    assert "one input pixel per cycle" in t["limit"] and t["meet_with"].startswith("2 copies")
    assert s["layers"]["MVAU_0"]["at_max_parallelism"] and s["layers"]["MVAU_0"]["dsp"] == 18


def test_summary_of_the_report_fixtures_at_a_met_target():
    est = parse_finn_estimates(FIX / "finn-report")  # slowest layer 98,304 cycles at 100 MHz: 1,017 frames/s
    build = {"layers": {name: {"op_type": name.rsplit("_", 1)[0]} for name in est["layers"]}}
    s = backend.summarize(est, build, load_board("zcu104"), 10.0, 1000)
    assert s["target"]["met"] and s["target"]["copies_needed"] == 1 and "limit" not in s["target"]
    assert s["estimate"]["max_cycles"] == 98304 and s["layers"]["MVAU_rtl_0"]["cycles"] == 98304
    assert s["estimate"]["resources"]["lut"] == est["resources"]["lut"]
    # An unknown part has no resources: no percentages, no verdict on the aim.
    s = backend.summarize(est, build, load_board("xc7a100tcsg324-1"), 10.0, 2000)
    assert s["estimate"]["utilization_percent"] is None and s["target"]["within_aim"] is None
    assert s["target"]["copies_needed"] == 2


def test_at_max_parallelism():
    assert backend.at_max_parallelism({"op_type": "MVAU_rtl", "PE": 8, "SIMD": 9, "max_PE": 8, "max_SIMD": 9})
    assert not backend.at_max_parallelism({"op_type": "MVAU_rtl", "PE": 4, "SIMD": 9, "max_PE": 8, "max_SIMD": 9})
    swu = {"op_type": "ConvolutionInputGenerator_rtl", "SIMD": 1, "max_SIMD": 1, "parallel_window": 0}
    assert not backend.at_max_parallelism(swu) and backend.at_max_parallelism({**swu, "parallel_window": 1})
    assert backend.at_max_parallelism({**swu, "depthwise": 1})  # a pooling window generator has no window mode
    assert not backend.at_max_parallelism({"op_type": "StreamingFIFO_rtl"})


# --- edgestem's FINN steps, on qonnx graphs (no FINN needed) -----------------------------------


def _model(nodes, inputs, outputs, inits):
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    def vi(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "g", [vi(*i) for i in inputs], [vi(*o) for o in outputs])
    model = ModelWrapper(qonnx_make_model(graph))
    for name, value in inits.items():
        model.set_initializer(name, np.asarray(value, dtype=np.float32))
    from qonnx.transformation.infer_shapes import InferShapes

    return model.transform(InferShapes())


def _run(model, x):
    from qonnx.core.onnx_exec import execute_onnx

    return execute_onnx(model, {model.graph.input[0].name: x.astype(np.float32)})[model.graph.output[0].name]


def test_round_half_even_makes_thresholds_round_like_brevitas():
    from onnx import helper
    from qonnx.core.datatype import DataType

    # A 6-bit unsigned activation of an integer accumulator with step 128 and a bias per channel:
    # FINN's thresholds sit on the ties (x >= t rounds half up); Brevitas rounds half to even.
    bias = np.array([0.0, 37.0, -64.0])
    steps = np.arange(63) + 0.5
    thresholds = steps[None, :] * 128 - bias[:, None]
    mt = helper.make_node(
        "MultiThreshold", ["x", "t"], ["y"], domain="qonnx.custom_op.general", out_dtype="UINT6", name="mt"
    )
    x = np.repeat(np.arange(-300, 64 * 128 + 300)[:, None], 3, axis=1).astype(np.float64)
    model = _model([mt], [("x", list(x.shape))], [("y", list(x.shape))], {"t": thresholds})
    model.set_tensor_datatype("x", DataType["INT16"])
    want = np.clip(np.rint((x + bias) / 128), 0, 63)  # np.rint: half to even, like torch.round
    half_up = _run(model, x)
    v = (x + bias) / 128
    ties_down = (v % 1 == 0.5) & (np.floor(v) % 2 == 0) & (v > 0) & (v < 63)  # where half to even rounds down
    assert np.array_equal(half_up != want, ties_down)
    state = {}
    model = driver.edgestem_round_half_even(model, None, state)
    assert np.array_equal(_run(model, x), want)
    assert state["tie_rounding"]["exact"] and state["tie_rounding"]["nodes"]["mt"]["adjusted"] == 3 * 32
    # Float inputs: no integer ties to move; the node is reported as not made exact.
    model.set_tensor_datatype("x", DataType["FLOAT32"])
    state = {}
    driver.edgestem_round_half_even(model, None, state)
    assert not state["tie_rounding"]["exact"] and "not integer" in state["tie_rounding"]["nodes"]["mt"]["skipped"]


def test_integer_input_replaces_the_input_quantizer():
    from onnx import helper

    q = helper.make_node(
        "Quant",
        ["x", "s", "z", "b"],
        ["y"],
        domain="qonnx.custom_op.general",
        name="input_quant",
        signed=0,
        narrow=0,
        rounding_mode="ROUND",
    )
    model = _model([q], [("x", [1, 1, 4, 4])], [("y", [1, 1, 4, 4])], {"s": 0.125, "z": 0.0, "b": 8.0})
    x = np.array([0.0, 0.0625, 0.1875, 3.1, 40.0, -1.0, 0.3125, 31.9375] * 2).reshape(1, 1, 4, 4)
    ref = _run(model, x)  # QONNX's Quant: half to even, clipped to [0, 255] * 0.125
    state = {}
    model = driver.edgestem_integer_input(model, None, state)
    assert [n.op_type for n in model.graph.node] == ["Mul"] and model.get_tensor_datatype("x").name == "UINT8"
    spec = state["input"]
    assert spec == {**spec, "integer": True, "datatype": "UINT8", "scale": 0.125, "min": 0, "max": 255}
    codes = driver.quantize_input(x, spec)
    assert np.array_equal(codes.ravel()[:4], [0, 0, 2, 25]) and codes.max() == 255 and codes.min() == 0
    assert np.array_equal(_run(model, codes), ref)


def test_integer_tail_adds_the_bias_to_the_accumulator():
    from onnx import helper
    from qonnx.core.datatype import DataType

    c, b = 2.0**-14, np.array([3, -7, 0, 12]) * 2.0**-14
    nodes = [helper.make_node("Mul", ["x", "c"], ["m"], name="scale"), helper.make_node("Add", ["m", "b"], ["y"])]
    model = _model(nodes, [("x", [1, 4])], [("y", [1, 4])], {"c": c, "b": b})
    model.set_tensor_datatype("x", DataType["INT15"])
    x = np.array([[100, -5, 16383, -16384]], dtype=np.float64)
    ref = _run(model, x)
    state = {}
    model = driver.edgestem_integer_tail(model, None, state)
    assert [n.op_type for n in model.graph.node] == ["Add", "Mul"] and state["integer_tail"]
    assert np.array_equal(model.get_initializer(model.graph.node[0].input[1]), [3, -7, 0, 12])
    assert np.array_equal(_run(model, x), ref)
    # A bias off the scale's grid stays where it is.
    model = _model(nodes, [("x", [1, 4])], [("y", [1, 4])], {"c": c, "b": b + 2.0**-16})
    model.set_tensor_datatype("x", DataType["INT15"])
    assert [n.op_type for n in driver.edgestem_integer_tail(model, None, {}).graph.node] == ["Mul", "Add"]


# --- the FINN environment and failures ----------------------------------------------------------


def test_missing_finn_environment_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(backend.VENV_VARIABLE, str(tmp_path / "no-venv"))
    with pytest.raises(ToolMissingError, match=r"^FINN environment .*no-venv not found: run scripts/setup-finn.sh"):
        backend.build_finn(tmp_path / "run")
    env = {**os.environ, backend.VENV_VARIABLE: str(tmp_path / "no-venv")}
    r = subprocess.run(
        [sys.executable, "-m", "edgestem.cli", "firmware", "--backend", "finn", "--run", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "scripts/setup-finn.sh" in r.stderr and len(r.stderr.splitlines()) == 1


def test_target_fps_is_for_finn_only(tmp_path):
    cmd = ["firmware", "--backend", "hls4ml", "--run", str(tmp_path), "--target-fps", "87k"]
    r = subprocess.run([sys.executable, "-m", "edgestem.cli", *cmd], capture_output=True, text=True)
    assert r.returncode == 2 and "only --backend finn folds for a frame rate" in r.stderr


def test_vivado_detection(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert backend.vivado() == "vivado is not on PATH"
    (tmp_path / "vivado").write_text("#!/bin/sh\n")
    (tmp_path / "vivado").chmod(0o755)
    monkeypatch.delenv("XILINX_VIVADO", raising=False)
    assert backend.vivado() == "XILINX_VIVADO is not set"
    monkeypatch.setenv("XILINX_VIVADO", str(tmp_path))
    assert backend.vivado() is None


@pytest.fixture
def fake_finn(tmp_path, monkeypatch):
    """A 'FINN environment' whose Python is this one, and a stand-in driver that fails in a named step."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setenv(backend.VENV_VARIABLE, str(venv))
    fake = tmp_path / "driver.py"
    fake.write_text(
        "import json, sys\n"
        "out = sys.argv[sys.argv.index('--out') + 1]\n"
        "print('Traceback ... ValueError: no layer for Einsum')\n"
        "json.dump({'steps': [{'name': 'step_tidy_up', 'seconds': 1}], "
        "'failed': {'step': 'step_convert_to_hw', 'error': 'ValueError: no layer for Einsum'}}, "
        "open(out + '/steps.json', 'w'))\n"
        "sys.exit(1)\n"
    )
    monkeypatch.setattr(backend, "DRIVER", fake)
    return tmp_path


def test_a_failed_step_is_one_line_naming_the_log(fake_finn):
    out = fake_finn / "out"
    out.mkdir()
    log = out / "finn.log"
    with pytest.raises(EdgestemError) as err:
        backend.run_driver(["--onnx", "x.onnx", "--config", "c.json", "--out", str(out)], out, log, "build")
    msg = str(err.value)
    assert msg == f"FINN build failed: step step_convert_to_hw: ValueError: no layer for Einsum (log: {log})"
    assert "no layer for Einsum" in log.read_text() and "\n" not in msg


# --- the real thing (FINN in .venv-finn) --------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qat_run):
    from edgestem.export.qonnx import export_run

    run = tmp_path_factory.mktemp("finn") / "run"
    shutil.copytree(tiny_qat_run, run)
    export_run(run, patterns=4)
    return run


@pytest.fixture(scope="module")
def built(exported):
    """FINN build of the tiny encoder (32 x 32 input, channels [4, 8], hidden 8) by the CLI, checked on 24 patterns."""
    t0 = time.perf_counter()
    cmd = ["firmware", "--backend", "finn", "--run", str(exported), "--target-fps", "87k", "--patterns", "24"]
    r = subprocess.run([sys.executable, "-m", "edgestem.cli", *cmd], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads((exported / "firmware" / "finn" / "firmware.json").read_text())
    return exported, report, time.perf_counter() - t0, r.stdout


@pytest.mark.finn
@needs_finn
def test_build_writes_reports_code_and_firmware_json(built):
    run, report, seconds, stdout = built
    assert "FINN Python execution vs Brevitas: 24 of 24 patterns bit-exact" in stdout
    assert "FINN estimate on zcu104 at 200 MHz" in stdout and "target 87,000 frames/s (2,298 cycles" in stdout
    out = run / "firmware" / "finn"
    for name in (
        "report/estimate_network_performance.json",
        "report/estimate_layer_resources.json",
        "report/estimate_layer_cycles.json",
        "report/auto_folding_config.json",
        "report/edgestem_build.json",
        "emulation.onnx",
        "build.json",
        "finn.log",
        "steps.json",
        "firmware.json",
    ):
        assert (out / name).is_file(), name
    assert list((out / "build").glob("code_gen_ipgen_MVAU_rtl_0_*/*.v")), "RTL of the first MVAU"
    m = json.loads((out / "firmware.json").read_text())["metrics"]
    assert [s["name"] for s in m["steps"]] == backend.build_config("p", 5, 1)["steps"]
    assert m["skipped_steps"] == list(backend.VIVADO_STEPS) and "vivado is not on PATH" in m["vivado"]
    assert m["part"] == "xczu7ev-ffvc1156-2-e" and m["clock_ns"] == 5.0 and m["target_fps"] == 87000
    e = m["estimate"]
    assert (
        e["resources"]["lut"] > 0 and e["max_cycles"] > 0 and e["estimated_fps"] == pytest.approx(2e8 / e["max_cycles"])
    )
    # 32 x 32 input: conv1's sliding window takes one pixel per cycle of the 34 x 34 padded frame.
    assert e["max_cycles"] >= 32 * 32 and m["target"]["cycle_budget"] == 2298
    mvaus = {v["layer"]: v for v in m["layers"].values() if v["op_type"].startswith("MVAU")}
    assert list(mvaus) == ["conv1", "conv2", "fc1", "fc2"] and all("PE" in v and "SIMD" in v for v in mvaus.values())
    assert m["partition"]["input_datatype"] == "UINT8" and m["partition"]["host_after"] == ["Mul", "Quant"]
    assert m["input"]["integer"] and m["tie_rounding"]["exact"]
    c = m["bit_exact"]
    assert c["exact"] and c["exact_expected"] and c["patterns"] == 24, c
    # synth-report and budget find FINN's reports where they look.
    from edgestem.firmware.synth_report import collect

    assert collect(run)["finn"]["estimate"]["max_cycles"] == e["max_cycles"]
    print(f"tiny FINN build + 24-pattern check: {seconds:.1f} s (build {m['seconds']['build']:.1f} s)")


@pytest.mark.finn
@needs_finn
def test_a_failing_finn_step_keeps_the_log(exported, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    conf = backend.build_config("xczu7ev-ffvc1156-2-e", 5.0, 1000)
    conf["steps"] = ["step_tidy_up", "step_no_such_thing"]
    (out / "build.json").write_text(json.dumps(conf))
    onnx = exported / "export" / "encoder_nchw.onnx"
    args = ["--onnx", str(onnx), "--config", str(out / "build.json"), "--out", str(out)]
    with pytest.raises(EdgestemError, match=r"FINN build failed: step step_no_such_thing: .* \(log: .*finn.log\)$"):
        backend.run_driver(args, out, out / "finn.log", "build")
    assert json.loads((out / "steps.json").read_text())["steps"][0]["name"] == "step_tidy_up"
