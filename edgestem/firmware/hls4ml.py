"""hls4ml firmware from the exported QONNX encoder (``edgestem firmware --backend hls4ml``).

Reads ``RUN/export/encoder.onnx`` (channels-last QONNX, see :mod:`edgestem.export.qonnx`) and
writes an hls4ml project to ``RUN/firmware/hls4ml/``: HLS C++ (top function ``encoder``), the
build tcl (``build_prj.tcl``: csim, csynth, cosim, export; ``vivado_synth.tcl``), the testbench,
the C++ emulation library compiled with g++, ``hls4ml_config.yaml`` (what edgestem gave hls4ml:
enough to rebuild the project with hls4ml alone; ``hls4ml_config.yml`` is hls4ml's own dump),
``hls4ml.log`` (hls4ml's console output) and ``firmware.json``, written last: a project
directory without it is incomplete.

Every precision comes from the QONNX quantizers (``config_from_onnx_model(granularity='name')``
leaves them ``auto``) with one documented exception: the graph input. hls4ml converts the
float input to the input type *before* the input quantizer rounds it, so a narrow input type
would round twice (docs/firmware.md). The input type is therefore ``fixed<b+26, b+e+2, TRN,
SAT>`` for a ``b``-bit input quantizer of scale ``2^e``: 24 more fraction bits than the
quantizer, so truncating a float32 pattern can never move it across a rounding tie, and two more
integer bits with saturation, so out-of-range values clip as in Brevitas. The C++ emulation
(``hls_model.predict``) is then compared with the Brevitas forward on real patterns and the
mismatches are counted.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import EdgestemError, ToolMissingError
from edgestem.export import qonnx as qx
from edgestem.firmware.registry import (
    REPORT_FILE,
    FirmwareMismatch,
    FirmwareRequest,
    clear_project,
    write_firmware_report,
)
from edgestem.rundir import firmware_dir

BACKEND = "hls4ml"
PROJECT = "encoder"  # hls4ml project name = HLS top function
CONFIG_FILE = "hls4ml_config.yaml"
LOG_FILE = "hls4ml.log"
# hls4ml's default type, used only where a precision cannot be inferred from the quantizers.
DEFAULT_PRECISION = "fixed<16,6>"
# io_parallel partitions every feature map into registers: beyond this many values in the first
# conv's output it is not a realistic design, and its C++ takes minutes to compile (docs/toolchain.md:
# 64 x 64 input, about 200 s at -O3).
MAX_PARALLEL_VALUES = 4096


def input_precision(bits: int, scale_log2: int) -> str:
    """The graph input type that lets the input quantizer (``bits``, scale ``2^scale_log2``) round once."""
    integer = max(2, bits + scale_log2 + 2)
    fraction = -scale_log2 + 24
    return f"fixed<{integer + fraction},{integer},TRN,SAT>"


def _input_quant(model: Any) -> tuple[int, int]:
    """Bit width and scale exponent of the Quant node on the graph input."""
    for t in qx.quant_tensors(model):
        if t["node"] == "input_quant":
            if not isinstance(t["scale_log2"], float):
                raise EdgestemError("the input quantizer has per-channel scales; firmware needs one input scale")
            return int(t["bits"]), int(t["scale_log2"])
    raise EdgestemError("the exported graph has no input quantizer; re-export with edgestem export")


def _check_supported(model: Any, hls4ml: Any) -> None:
    supported = set(hls4ml.converters.get_supported_onnx_layers())
    for node in model.graph.node:
        if node.op_type not in supported:
            raise EdgestemError(
                f"hls4ml {hls4ml.__version__} does not support layer {node.name} ({node.op_type}); "
                "build the encoder from Conv, ReLU, MaxPool, Flatten and Linear layers only"
            )


def _check_io(req: FirmwareRequest, cfg: Any) -> None:
    size, c1 = cfg.preprocess.size, cfg.model.encoder.channels[0]
    values = size * size * c1
    if req.io == "parallel" and values > MAX_PARALLEL_VALUES:
        raise EdgestemError(
            f"--io parallel partitions every feature map into registers: conv1's output is {size}x{size}x{c1} "
            f"= {values} values (limit {MAX_PARALLEL_VALUES}), not a realistic design and minutes of g++ "
            "(a 64x64 input took about 200 s); use --io stream"
        )


def _hls_config(hls4ml: Any, model: Any, req: FirmwareRequest, backend: str) -> dict[str, Any]:
    """hls4ml's per-layer config from the QONNX model; only reuse, strategy and the input type are set."""
    cfg = hls4ml.utils.config.config_from_onnx_model(
        model,
        granularity="name",
        backend=backend,
        default_precision=DEFAULT_PRECISION,
        default_reuse_factor=req.reuse,
    )
    cfg["Model"]["Strategy"] = req.strategy.capitalize()
    cfg["Model"]["ReuseFactor"] = req.reuse
    for layer in cfg["LayerName"].values():
        if "ReuseFactor" in layer:
            layer["ReuseFactor"] = req.reuse
    name = model.graph.input[0].name
    cfg["LayerName"].setdefault(name, {}).setdefault("Precision", {})["result"] = input_precision(*_input_quant(model))
    return cfg


def fix_scale_down_conv(hls_model: Any, backend: str) -> list[str]:
    """Work around hls4ml 1.3.0's ``ScaleDownConv`` pass; returns the layers it had to fix.

    After a conv with c_in != c_out the pass copies a stale ``n_filt`` onto the rescale layer it
    inserts (ApplyAlpha), so half the channels get the wrong biases. Setting ``n_filt = -1``
    (one scale per element) and re-applying the templates fixes it. Power-of-two models never
    get such a layer; the fix is here for the day a pass inserts one anyway.
    """
    fixed = []
    for layer in hls_model.get_layers():
        if layer.class_name != "ApplyAlpha" or layer.get_attr("n_filt", -1) == -1:
            continue
        parent = layer.get_input_node()
        if parent is not None and parent.class_name.startswith("Conv"):
            layer.set_attr("n_filt", -1)
            fixed.append(layer.name)
    if fixed:
        hls_model.apply_flow(f"{backend.lower()}:apply_templates", reapply="single")
    return fixed


def layer_precisions(hls_model: Any) -> dict[str, dict[str, Any]]:
    """Per hls4ml layer: class, the types it uses (result, weight, bias, accum, ...), reuse factor."""
    out: dict[str, dict[str, Any]] = {}
    for layer in hls_model.get_layers():
        row: dict[str, Any] = {"class": layer.class_name}
        for key, t in layer.types.items():
            if key not in ("table_t", "index_t"):
                row[key.removesuffix("_t")] = str(t.precision)
        rf = layer.get_attr("reuse_factor")
        if rf is not None:
            row["reuse_factor"] = int(rf)
        strategy = layer.get_attr("strategy")
        if strategy is not None:
            row["strategy"] = str(strategy)
        out[layer.name] = row
    return out


def _quiet(fn: Callable[[], Any], log: list[str]) -> Any:
    """Run ``fn`` with hls4ml's print() output captured into ``log``."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            return fn()
    finally:
        log.append(buf.getvalue())


def build(req: FirmwareRequest) -> dict[str, Any]:
    """Write, compile and check the hls4ml project of a run; returns the ``firmware.json`` report."""
    from edgestem.atomic import write_text

    t0 = time.perf_counter()
    hls4ml = qx.require("hls4ml")
    if shutil.which("g++") is None:
        raise ToolMissingError(
            "g++ not found: install a C++ compiler (e.g. apt-get install g++) to compile the hls4ml emulation"
        )
    run = Path(req.run)
    onnx_path, exported, q = qx.exported(run, qx.ONNX_FILE)
    src = exported["source"]
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(onnx_path))
    qx.check_power_of_two(model, str(onnx_path))
    _check_supported(model, hls4ml)
    _check_io(req, q.cfg)
    backend = {"vitis": "Vitis", "vivado": "Vivado"}[req.hls]
    log: list[str] = []
    hls_config = _quiet(lambda: _hls_config(hls4ml, model, req, backend), log)
    out = req.out_dir(BACKEND)
    clear_project(out)
    convert_args = {
        "output_dir": str(out),
        "project_name": PROJECT,
        "backend": backend,
        "part": req.board.part,
        "clock_period": req.clock_ns,
        "io_type": f"io_{req.io}",
    }
    t = time.perf_counter()
    try:
        hls_model = _quiet(
            lambda: hls4ml.converters.convert_from_onnx_model(model, hls_config=hls_config, **convert_args), log
        )
    except Exception as exc:  # noqa: BLE001 - hls4ml raises bare Exceptions; report them on one line
        write_text(out / LOG_FILE, "".join(log))
        raise EdgestemError(
            f"hls4ml could not convert {onnx_path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
            f"(log: {out / LOG_FILE})"
        ) from None
    fixed = fix_scale_down_conv(hls_model, backend)
    convert_s = time.perf_counter() - t

    t = time.perf_counter()
    try:
        _quiet(hls_model.compile, log)
    except Exception:  # noqa: BLE001 - hls4ml prints g++'s output and raises a bare Exception
        write_text(out / LOG_FILE, "".join(log))
        errors = [line for line in "".join(log).splitlines() if "error" in line.lower()]
        raise EdgestemError(
            f"g++ could not compile the hls4ml project in {out}: {errors[0].strip() if errors else 'see the log'} "
            f"(log: {out / LOG_FILE})"
        ) from None
    compile_s = time.perf_counter() - t
    write_text(out / LOG_FILE, "".join(log))

    x, idx = qx.sample_patterns(q, req.patterns, req.data)
    ref = qx.brevitas_outputs(q.encoder, x)
    t = time.perf_counter()
    got = hls_model.predict(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    predict_s = time.perf_counter() - t
    check = qx.compare(np.asarray(got).reshape(ref.shape), ref, idx)
    check["patterns_per_second"] = round(len(x) / predict_s, 1) if predict_s > 0 else None
    check["indices"] = idx.tolist()

    import yaml

    from edgestem.atomic import atomic_path

    with atomic_path(out / CONFIG_FILE) as tmp:
        tmp.write_text(yaml.safe_dump({"convert": convert_args, "hls_config": hls_config}, sort_keys=False))
    library = sorted((out / "firmware").glob(f"{PROJECT}-*.so"))
    metrics = {
        "backend": BACKEND,
        "hls4ml": hls4ml.__version__,
        "hls": backend,
        "board": req.board.name,
        "part": req.board.part,
        "clock_ns": req.clock_ns,
        "io": req.io,
        "reuse": req.reuse,
        "strategy": req.strategy,
        "project": {
            "dir": str(out.resolve()),
            "top": PROJECT,
            "build_tcl": "build_prj.tcl",  # files relative to dir
            "library": library[-1].name if library else None,  # in firmware/
            "config": CONFIG_FILE,
        },
        "input_precision": hls_config["LayerName"][model.graph.input[0].name]["Precision"]["result"],
        "default_precision": DEFAULT_PRECISION,
        "precisions": layer_precisions(hls_model),
        "workarounds": {"scale_down_conv": fixed},
        "export": {"onnx": str(onnx_path), "source": src},
        "seconds": {
            "convert": round(convert_s, 3),
            "write_compile": round(compile_s, 3),
            "predict": round(predict_s, 3),
        },
        "bit_exact": check,
    }
    report = write_firmware_report(req, out, onnx_path, q, metrics, t0)
    if not check["exact"]:
        raise FirmwareMismatch(qx.mismatch_message(f"the hls4ml C++ emulation in {out}", check) + "; see firmware.json")
    return report


def load_emulator(run: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled C++ emulation of a run's hls4ml firmware: ``f(x)`` maps ``(N, 1, H, W)`` to ``(N, 4)``.

    Loads the g++-built library named in ``firmware.json`` with ctypes (no hls4ml conversion). The
    library reads its weights from the project's ``firmware/weights/`` by absolute path, so the
    project must stay where it was built.
    """
    out = firmware_dir(run, BACKEND)
    report = out / REPORT_FILE
    if not report.is_file():
        raise EdgestemError(f"{run}: no hls4ml firmware ({report}); run edgestem firmware --backend hls4ml --run {run}")
    m = json.loads(report.read_text())["metrics"]
    lib = out / "firmware" / (m["project"]["library"] or "missing.so")
    built_in = Path(m["project"]["dir"]).resolve()
    if not lib.is_file() or built_in != out.resolve() or not (out / "firmware" / "weights").is_dir():
        raise EdgestemError(
            f"{out}: the compiled emulation is missing or the project moved from {built_in} (the library reads "
            f"its weights from there); run edgestem firmware --run {run} again"
        )
    fn = getattr(ctypes.CDLL(str(lib.resolve())), f"{m['project']['top']}_float")
    fn.restype = None
    fn.argtypes = [np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")] * 2

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))
        y = np.zeros((len(x), len(qx.OUTPUT_NAMES)), dtype=np.float32)
        for i in range(len(x)):
            fn(np.ascontiguousarray(x[i]), y[i])
        return y

    return predict


__all__ = ["build", "fix_scale_down_conv", "input_precision", "layer_precisions", "load_emulator"]
