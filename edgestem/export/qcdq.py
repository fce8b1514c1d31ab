"""QCDQ export (``edgestem export --format qcdq``): standard ONNX for ONNX Runtime on embedded CPUs.

``brevitas.export.export_onnx_qcdq`` writes QuantizeLinear / Clip / DequantizeLinear around float
Conv/Gemm nodes (opset 13). Its QuantizeLinear carries at most 8 bits, so the encoder's 16-bit
output quantizer cannot be exported that way: the graph is exported without it and the output
quantization is appended in standard ops, ``Mul(Clip(Round(Mul(y, 2^f)), -2^(b-1), 2^(b-1)-1),
2^-f)`` (ONNX ``Round`` rounds half to even, like Brevitas; with a power-of-two scale every step is
exact in float32). The input axis 0 is dynamic, so batches run in one call.

The graph is run with ONNX Runtime against the Brevitas forward on real patterns and the
difference is measured, not assumed: ONNX Runtime accumulates in float32 (exact while every
partial sum stays below 2^24 LSBs of the accumulator; the check counts mismatches) and may fuse
DequantizeLinear -> Conv -> QuantizeLinear into integer QLinearConv kernels whose requantization
rounds on its own. The stage fails only when a difference exceeds ``tolerance_lsb`` steps of the
output quantizer; the measured numbers are in ``export_qcdq.json``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import EdgestemError
from edgestem.export.qonnx import compare, graph_facts, require

QCDQ_FILE = "encoder_qcdq.onnx"
QCDQ_REPORT = "export_qcdq.json"


def _output_quantizer(encoder: Any) -> tuple[int, int, bool]:
    """Bit width, power-of-two exponent and sign of the encoder's output quantizer."""
    proxy = encoder.output.act_quant
    scale = float(proxy.scale().detach())
    exp = float(np.log2(scale))
    if exp != round(exp):
        raise EdgestemError(f"output quantizer scale {scale:.8g} is not a power of two; quantize with edgestem qat")
    return int(proxy.bit_width().detach()), int(round(exp)), bool(proxy.is_signed)


def _append_output_quant(path: Path, bits: int, exp: int, signed: bool) -> Any:
    """Append the output quantizer as Mul/Round/Clip/Mul to the graph at ``path``; returns the model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    y = g.output[0].name
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    consts = {
        "output_inv_scale": np.float32(2.0**-exp),
        "output_min": np.float32(lo),
        "output_max": np.float32(hi),
        "output_scale": np.float32(2.0**exp),
    }
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items())
    g.node.extend(
        [
            helper.make_node("Mul", [y, "output_inv_scale"], ["output_scaled"], name="output/scale"),
            helper.make_node("Round", ["output_scaled"], ["output_int"], name="output/round"),
            helper.make_node("Clip", ["output_int", "output_min", "output_max"], ["output_clip"], name="output/clip"),
            helper.make_node("Mul", ["output_clip", "output_scale"], ["output"], name="output/dequant"),
        ]
    )
    shape = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, shape))
    onnx.checker.check_model(m)
    return m


def export_qcdq(
    q: Any, x: np.ndarray, ref: np.ndarray, indices: np.ndarray, path: Path, tolerance_lsb: int = 0
) -> dict:
    """Write the QCDQ graph to ``path`` after checking it with ONNX Runtime against ``ref``; returns metrics."""
    import tempfile

    import torch
    from torch import nn

    require("onnxoptimizer")
    brevitas_export = require("brevitas.export")
    onnx = require("onnx")
    ort = require("onnxruntime")
    from edgestem.atomic import atomic_path

    bits, exp, signed = _output_quantizer(q.encoder)
    body = copy.deepcopy(q.encoder).eval()
    body.output = nn.Identity()
    last = [m for m in body.children() if hasattr(m, "return_quant_tensor")][-1]
    last.return_quant_tensor = False
    size = q.cfg.preprocess.size
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        brevitas_export.export_onnx_qcdq(
            body,
            torch.zeros(1, 1, size, size),
            export_path=str(raw),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["y"],
            dynamic_axes={"input": {0: "batch"}, "y": {0: "batch"}},
        )
        model = _append_output_quant(raw, bits, exp, signed)
    export_s = time.perf_counter() - t

    t = time.perf_counter()
    ort.set_default_logger_severity(3)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    res = compare(got, ref, indices)
    lsb = 2.0**exp
    res["max_diff_lsb"] = float(res["max_abs_diff"] / lsb)
    res["tolerance_lsb"] = tolerance_lsb
    res["output_lsb"] = lsb
    res["seconds"] = round(time.perf_counter() - t, 3)
    if res["max_diff_lsb"] > tolerance_lsb:
        f = res["first_mismatch"]
        raise EdgestemError(
            f"{QCDQ_FILE} under ONNX Runtime differs from Brevitas by up to {res['max_diff_lsb']:.0f} output LSBs "
            f"(tolerance {tolerance_lsb}): pattern {f['pattern']} output {f['output']} ({f['name']}) is "
            f"{f['value']:.8g}, Brevitas gives {f['reference']:.8g}; use --format qonnx for bit-exact work"
        )
    with atomic_path(path) as tmp_path:
        onnx.save(model, str(tmp_path))

    from qonnx.core.modelwrapper import ModelWrapper

    return {
        "graph": graph_facts(ModelWrapper(model)),
        "output_quantizer": {"bits": bits, "scale_log2": exp, "signed": signed, "appended_as": "Mul/Round/Clip/Mul"},
        "onnxruntime": ort.__version__,
        "verification": {"indices": indices.tolist(), QCDQ_FILE: res},
        "seconds": {"export": round(export_s, 3), "verify": res["seconds"]},
    }


def write_qcdq(job: Any) -> tuple[dict[str, Any], dict[str, Path], str]:
    """Export format ``qcdq`` (an :class:`~edgestem.export.qonnx.ExportJob`): one graph for ONNX Runtime."""
    path = job.out / QCDQ_FILE
    return (
        export_qcdq(job.q, job.x, job.ref, job.idx, path, tolerance_lsb=job.tolerance_lsb),
        {"onnx": path},
        QCDQ_REPORT,
    )
