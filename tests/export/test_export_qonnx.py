"""edgestem export: QONNX (and QCDQ) graphs of the quantized encoder, verified against Brevitas by execution."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("qonnx")
pytest.importorskip("brevitas")

from edgestem.errors import EdgestemError  # noqa: E402
from edgestem.export.qonnx import (  # noqa: E402
    brevitas_outputs,
    check_power_of_two,
    export_run,
    find_source,
    load_quantized,
    sample_patterns,
    verify,
)
from edgestem.model.encoder import count_macs  # noqa: E402

N = 12  # patterns per verification: QONNX execution takes ~25 ms each


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qat_run):
    """A copy of the tiny QAT run with RUN/export/ written."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_qat_run, run)
    report = export_run(run, patterns=N)
    return run, report


@pytest.fixture(scope="module")
def sample(exported):
    run, _ = exported
    q = load_quantized(run)
    x, idx = sample_patterns(q, N)
    return x, idx, brevitas_outputs(q.encoder, x)


def _model(run, name="encoder.onnx"):
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(str(run / "export" / name))


def test_export_writes_verified_channels_last_and_nchw_graphs(exported):
    run, report = exported
    m = json.loads((run / "export" / "export.json").read_text())["metrics"]
    assert m == json.loads(json.dumps(report["metrics"]))
    assert m["source"]["stage"] == "qat" and m["power_of_two"]
    for name in ("encoder.onnx", "encoder_nchw.onnx"):
        v = m["verification"][name]
        assert v["exact"] and v["patterns"] == N and v["max_abs_diff"] == 0.0
    assert m["graphs"]["encoder.onnx"]["input"]["shape"] == [1, 32, 32, 1]  # NHWC for hls4ml
    assert m["graphs"]["encoder_nchw.onnx"]["input"]["shape"] == [1, 1, 32, 32]  # NCHW for FINN
    ops = m["graphs"]["encoder.onnx"]["ops"]
    assert ops["qonnx.custom_op.channels_last:Conv"] == 2 and ops["MatMul"] == 2 and "Gemm" not in ops
    assert m["graphs"]["encoder_nchw.onnx"]["ops"]["Gemm"] == 2
    # Bit widths per tensor, by stable layer name.
    t = {row["node"]: row for row in m["tensors"]}
    assert t["input_quant"]["bits"] == 8 and not t["input_quant"]["signed"]
    assert t["conv1_weight"]["bits"] == 6 and t["conv1_weight"]["narrow"] and t["conv1_bias"]["bits"] == 16
    assert t["relu1_quant"]["role"] == "activation" and t["relu_fc1_quant"]["layer"] == "relu_fc1"
    assert t["output_quant"]["bits"] == 16 and t["output_quant"]["signed"]
    assert all(float(r["scale_log2"]).is_integer() for r in m["tensors"])
    q = load_quantized(run)
    assert m["cost"]["macs"] == count_macs(q.encoder, 32) and m["cost"]["bops"] > m["cost"]["macs"]
    names = {n.name for n in _model(run).graph.node}
    assert {"conv1", "relu1", "pool1", "conv2", "flatten", "fc1", "relu_fc1", "fc2", "output_quant"} <= names


def test_a_changed_bias_fails_verification(exported, sample):
    run, _ = exported
    x, idx, ref = sample
    model = _model(run)
    # One output bias off by one output LSB. (A weight can be off unnoticed when its input is 0 on
    # every checked pattern: verification proves equality on the patterns it runs, no more.)
    q = model.get_node_from_name("fc2_bias")
    lsb = float(model.get_initializer(model.get_node_from_name("output_quant").input[1]))
    step = float(model.get_initializer(q.input[1]).ravel()[0])
    b = model.get_initializer(q.input[0]).copy()
    b.flat[0] += max(step, lsb)
    model.set_initializer(q.input[0], b)
    with pytest.raises(EdgestemError, match=r"does not reproduce the Brevitas model: pattern \d+ output \d+"):
        verify(model, x, ref, idx, channels_last=True, what="corrupted")


def test_a_changed_power_of_two_scale_fails_verification(exported, sample):
    run, _ = exported
    x, idx, ref = sample
    model = _model(run, "encoder_nchw.onnx")
    q = model.get_node_from_name("relu1_quant")
    model.set_initializer(q.input[1], model.get_initializer(q.input[1]) * 2)
    check_power_of_two(model)  # still fixed point, so only executing it can tell
    with pytest.raises(EdgestemError, match="does not reproduce"):
        verify(model, x, ref, idx, channels_last=False, what="corrupted")


def test_float_scales_and_zero_points_are_refused_for_firmware(exported):
    run, _ = exported
    check_power_of_two(_model(run))
    model = _model(run)
    q = model.get_node_from_name("conv2_weight")
    model.set_initializer(q.input[1], model.get_initializer(q.input[1]) * 0.75)
    with pytest.raises(EdgestemError, match="float scales requested for firmware.*conv2_weight"):
        check_power_of_two(model)
    model = _model(run)
    q = model.get_node_from_name("relu2_quant")
    model.set_initializer(q.input[2], np.asarray(1.0, dtype=np.float32))
    with pytest.raises(EdgestemError, match="non-zero zero point"):
        check_power_of_two(model)


def test_qcdq_export_runs_under_onnxruntime_and_reports_its_difference(exported, sample):
    import onnxruntime as ort

    run, _ = exported
    x, _, ref = sample
    m = export_run(run, fmt="qcdq", patterns=N)["metrics"]
    v = m["verification"]["encoder_qcdq.onnx"]
    assert v["patterns"] == N and v["max_diff_lsb"] <= v["tolerance_lsb"]
    assert m["graph"]["ops"]["QuantizeLinear"] >= 1 and m["graph"]["ops"]["Round"] == 1
    assert json.loads((run / "export" / "export_qcdq.json").read_text())["metrics"]["format"] == "qcdq"
    s = ort.InferenceSession(str(run / "export" / "encoder_qcdq.onnx"), providers=["CPUExecutionProvider"])
    y = s.run(None, {"input": x[:3]})[0]  # batch axis is dynamic
    assert y.shape == (3, 4) and np.abs(y - ref[:3]).max() <= v["tolerance_lsb"] * v["output_lsb"]
    assert (run / "export" / "encoder.onnx").is_file()  # the QONNX export is left alone


def test_source_choice(exported, tmp_path):
    run, _ = exported
    assert find_source(run) == ("qat", run / "qat")
    assert find_source(run / "qat") == ("qat", run / "qat")  # a QAT run directory itself
    fake = tmp_path / "run"
    (fake / "prune").mkdir(parents=True)
    shutil.copytree(run / "qat", fake / "qat")
    shutil.copy(run / "checkpoint.pt", fake / "prune" / "checkpoint.pt")  # a float pruned model
    assert find_source(fake) == ("qat", fake / "qat")
    with pytest.raises(EdgestemError, match="float model.*--from qat"):
        find_source(fake, "prune")
    shutil.copy(run / "qat" / "checkpoint.pt", fake / "prune" / "checkpoint.pt")
    assert find_source(fake) == ("prune", fake / "prune")
    with pytest.raises(EdgestemError, match="no pruned run .*run edgestem prune first"):
        find_source(run, "prune")
    with pytest.raises(EdgestemError, match="--source 'best'"):
        find_source(run, "best")


def test_no_qat_checkpoint(tmp_path, tiny_qat_run):
    shutil.copy(tiny_qat_run / "checkpoint.pt", tmp_path / "checkpoint.pt")  # a float run only
    with pytest.raises(EdgestemError, match="no QAT checkpoint.*run edgestem qat --run"):
        export_run(tmp_path)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "onnx"], "--format: unknown export format 'onnx': choose one of qonnx, qcdq"),
        (["--patterns", "0"], "--patterns 0"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(exported, args, message):
    run, _ = exported
    r = subprocess.run(
        [sys.executable, "-m", "edgestem.cli", "export", "--run", str(run), *args], capture_output=True, text=True
    )
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_without_qat(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "edgestem.cli", "export", "--run", str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "run edgestem qat --run" in r.stderr and len(r.stderr.splitlines()) == 1
