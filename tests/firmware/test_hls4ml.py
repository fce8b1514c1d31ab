"""edgestem firmware --backend hls4ml: project written, C++ compiled with g++, bit-exact against Brevitas."""

import json
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("hls4ml")
pytest.importorskip("qonnx")

from edgestem.errors import ConfigError, EdgestemError, ToolMissingError  # noqa: E402
from edgestem.export.qonnx import brevitas_outputs, export_run, load_quantized, sample_patterns  # noqa: E402
from edgestem.firmware import hls4ml as backend  # noqa: E402
from edgestem.firmware.registry import FirmwareRequest, build_firmware, get, names  # noqa: E402

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to compile the hls4ml emulation")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qat_run):
    run = tmp_path_factory.mktemp("firmware") / "run"
    shutil.copytree(tiny_qat_run, run)
    export_run(run, patterns=4)
    return run


@pytest.fixture(scope="module")
def built(exported):
    """The hls4ml project of the tiny encoder (32 x 32 input, channels [4, 8], hidden 8): ~15 s of g++."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to compile the hls4ml emulation")
    t0 = time.perf_counter()
    report = build_firmware("hls4ml", exported, board="zcu104", patterns=24)
    return exported, report, time.perf_counter() - t0


@needs_gxx
def test_project_is_written_compiled_bit_exact_and_loadable(built):
    run, report, seconds = built
    out = run / "firmware" / "hls4ml"
    for name in ("build_prj.tcl", "vivado_synth.tcl", "firmware/encoder.cpp", "hls4ml_config.yaml", "hls4ml.log"):
        assert (out / name).is_file(), name
    m = json.loads((out / "firmware.json").read_text())["metrics"]
    assert m["part"] == "xczu7ev-ffvc1156-2-e" and m["clock_ns"] == 5.0 and m["io"] == "stream" and m["hls"] == "Vitis"
    c = m["bit_exact"]
    assert c["exact"] and c["patterns"] == 24 and c["mismatched_outputs"] == 0, c
    assert m["project"]["library"].endswith(".so") and m["seconds"]["write_compile"] < seconds
    # Precisions come from the quantizers, named after the encoder's layers; only the input is overridden.
    p = m["precisions"]
    assert p["Conv2D_conv1"]["weight"].startswith("fixed<6,") and p["Dense_fc2"]["result"].startswith("fixed<16,")
    assert p["relu1"]["result"].startswith("ufixed<6,") and p["input_quant_act"]["result"].startswith("ufixed<8,")
    tensors = json.loads((run / "export" / "export.json").read_text())["metrics"]["tensors"]
    scale_log2 = next(int(t["scale_log2"]) for t in tensors if t["node"] == "input_quant")
    assert m["input_precision"] == backend.input_precision(8, scale_log2)
    assert m["workarounds"] == {"scale_down_conv": []}
    # The compiled library is the emulation: loaded without hls4ml, it gives the same outputs.
    q = load_quantized(run)
    x, _ = sample_patterns(q, 6)
    assert (backend.load_emulator(run)(x) == brevitas_outputs(q.encoder, x)).all()


def test_input_precision_rounds_once():
    # 8-bit input, scale 2^-5 (ufixed<8,3>): 2 more integer bits with saturation, 24 more fraction bits.
    assert backend.input_precision(8, -5) == "fixed<34,5,TRN,SAT>"
    assert backend.input_precision(4, -6) == "fixed<32,2,TRN,SAT>"


def _request(run, **kw):
    from edgestem.targets.boards import load_board

    board = load_board("zcu104")
    return FirmwareRequest(run=run, board=board, clock_ns=board.clock_ns, patterns=2, **kw)


def test_registry():
    assert "hls4ml" in names() and get("hls4ml") is backend.build
    with pytest.raises(ConfigError, match="unknown firmware backend 'verilog': choose one of hls4ml"):
        get("verilog")
    with pytest.raises(ConfigError, match="--io 'axi'"):
        _request("run", io="axi")
    with pytest.raises(ConfigError, match="--reuse 0"):
        _request("run", reuse=0)


def test_refusals_before_any_build(exported, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown board 'nope'"):
        build_firmware("hls4ml", exported, board="nope")
    with pytest.raises(EdgestemError, match="run edgestem export --run"):
        backend.build(_request(tmp_path))
    monkeypatch.setattr(backend, "MAX_PARALLEL_VALUES", 1024)  # the tiny model's conv1 makes 32 x 32 x 4 values
    with pytest.raises(EdgestemError, match="--io parallel .* use --io stream"):
        backend.build(_request(exported, io="parallel"))
    monkeypatch.setattr(backend.shutil, "which", lambda tool: None)
    with pytest.raises(ToolMissingError, match="^g\\+\\+ not found"):
        backend.build(_request(exported))


@pytest.fixture
def copy(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported, run, ignore=shutil.ignore_patterns("firmware"))
    return run


def _edit(run, fn):
    from qonnx.core.modelwrapper import ModelWrapper

    path = run / "export" / "encoder.onnx"
    model = ModelWrapper(str(path))
    fn(model)
    model.save(str(path))


def test_unsupported_layer_is_named(copy):
    def rename(model):
        model.get_node_from_name("flatten").op_type = "Einsum"

    _edit(copy, rename)
    with pytest.raises(EdgestemError, match=r"does not support layer flatten \(Einsum\)"):
        backend.build(_request(copy))


def test_float_scale_is_refused(copy):
    def scale(model):
        q = model.get_node_from_name("fc1_weight")
        model.set_initializer(q.input[1], model.get_initializer(q.input[1]) * 0.6)

    _edit(copy, scale)
    with pytest.raises(EdgestemError, match="float scales requested for firmware"):
        backend.build(_request(copy))


def test_stale_export_is_refused(copy):
    path = copy / "export" / "export.json"
    report = json.loads(path.read_text())
    report["metrics"]["source"]["sha256"] = "0" * 64
    path.write_text(json.dumps(report))
    with pytest.raises(EdgestemError, match="is older than .*run edgestem export"):
        backend.build(_request(copy))


def test_cli_unknown_board_is_one_line(exported):
    r = subprocess.run(
        [sys.executable, "-m", "edgestem.cli", "firmware", "--run", str(exported), "--board", "zcu999"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown board 'zcu999'" in r.stderr and len(r.stderr.splitlines()) == 1
