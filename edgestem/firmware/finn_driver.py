"""FINN build and execution driver: runs INSIDE FINN's own environment (``.venv-finn``), never in edgestem's.

FINN (finn-plus) pins brevitas, onnx, onnxruntime and protobuf versions that contradict edgestem's
(docs/firmware.md), so :mod:`edgestem.firmware.finn` calls this file as a script with the FINN
venv's Python and passes it only a QONNX file and a JSON build config; it imports nothing of
edgestem. Importing it is harmless (standard library only at module level): every FINN import
happens in the functions ``main`` calls.

Build (``--onnx ENCODER_NCHW.onnx --config build.json --out DIR``): runs the configured steps one
by one, FINN's own (``step_qonnx_to_finn`` ... ``step_hw_codegen``, looked up in FINN's step
registry) and edgestem's (``edgestem_*``, below), saves the model after each one in
``DIR/intermediate_models/``, and records progress in ``DIR/steps.json`` after every step (a failed
step is named there with its error). FINN writes its reports to ``DIR/report/``; this driver adds
``DIR/report/edgestem_build.json`` (input and output interface, tie rounding, folding per layer)
and ``DIR/emulation.onnx`` (the graph right before the dataflow partition, which FINN can execute
in Python). The edgestem steps:

- ``edgestem_integer_input``: the accelerator takes the input quantizer's integer codes. FINN
  hardware streams integers; a Quant node on the float graph input would become a thresholding
  layer on float data. The Quant node is replaced by a ``Mul`` by its scale and the graph input
  annotated with the quantizer's integer type; streamlining absorbs the ``Mul``. The host (or
  the detector's front end) quantizes: ``clip(round_half_even(x / scale))``, as Brevitas does.
- ``edgestem_round_half_even``: FINN turns a ROUND quantizer into thresholds ``x >= t`` placed at
  the rounding ties, so ties round half up; Brevitas (and QONNX) round half to even. On an integer
  accumulator a tie is a threshold with an integer value; raising by one every such threshold whose
  upper level is odd sends those ties down to the even level. Exact, not an epsilon: with integer
  inputs ``x >= t + 1`` is ``x > t``.
- ``edgestem_integer_tail``: ``MatMul -> Mul(c) -> Add(b)`` (the last layer's scale, then its bias)
  becomes ``MatMul -> Add(b / c) -> Mul(c)`` when ``b / c`` is integral, so the bias is added to
  the integer accumulator in hardware.
- ``edgestem_host_dequant``: FINN would put the final float ``Mul`` (de-quantisation) into the
  accelerator as a float HLS layer; it is turned back into an ONNX ``Mul`` so it stays on the host
  with the output quantizer.

Execute (``--execute DIR --inputs X.npy --outputs Y.npy``): FINN's Python execution of
``DIR/emulation.onnx`` on pre-processed patterns ``(N, 1, H, W)`` float32; the input codes are
made as above; writes the outputs ``(N, K)`` float64.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

STEPS_FILE = "steps.json"
BUILD_REPORT = "edgestem_build.json"
EMULATION_MODEL = "emulation.onnx"
PARTITION_STEP = "step_create_dataflow_partition"
# Node attributes worth reporting per hardware layer (folding, memory, implementation).
FOLDING_ATTRS = ("PE", "SIMD", "parallel_window", "depthwise", "ram_style", "mem_mode", "resType", "impl_style")
# The attribute that bounds each parallelism knob: PE / SIMD cannot exceed it.
MAX_ATTRS = {
    "PE": ("MH", "NumChannels", "Channels"),
    "SIMD": ("MW", "IFMChannels", "NumChannels"),
}


def _own_dir_off_path() -> None:
    """Keep this file's folder (edgestem/export, holding qonnx.py and finn.py) from shadowing the real packages."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def _log(message: str) -> None:
    print(f"[edgestem-finn] {message}", flush=True)


# --- edgestem's steps ---------------------------------------------------------------------------


def edgestem_integer_input(model, cfg, state):
    """Replace the Quant node on the graph input by ``Mul(scale)``; annotate the input as the quantizer's integers."""
    import numpy as np
    from onnx import helper
    from qonnx.core.datatype import DataType

    g = model.graph
    name = g.input[0].name
    quant = [n for n in g.node if n.op_type == "Quant" and n.input[0] == name]
    if not quant:
        state["input"] = {"integer": False, "note": "no Quant node on the graph input: the input is used as it is"}
        return model
    q = quant[0]
    scale, zp, bits = (model.get_initializer(t) for t in q.input[1:4])
    if scale is None or zp is None or bits is None or np.asarray(scale).size != 1 or np.any(np.asarray(zp) != 0):
        raise ValueError(f"input Quant node {q.name}: needs one constant scale and a zero zero-point")
    attrs = {a.name: helper.get_attribute_value(a) for a in q.attribute}
    signed, narrow, bits = bool(attrs.get("signed", 1)), bool(attrs.get("narrow", 0)), int(np.asarray(bits).ravel()[0])
    scale = float(np.asarray(scale).ravel()[0])
    if signed:
        lo, hi = -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1 - int(narrow)
    dtype = f"{'INT' if signed else 'UINT'}{bits}"
    scale_name = f"{q.name}_scale"
    model.set_initializer(scale_name, np.asarray(scale, dtype=np.float32))
    idx = list(g.node).index(q)
    g.node.remove(q)
    g.node.insert(idx, helper.make_node("Mul", [name, scale_name], [q.output[0]], name=f"{q.name}_dequant"))
    model.set_tensor_datatype(name, DataType[dtype])
    state["input"] = {
        "integer": True,
        "datatype": dtype,
        "scale": scale,
        "min": lo,
        "max": hi,
        "rounding": _text(attrs.get("rounding_mode", "ROUND")),
        "note": "the accelerator takes clip(round_half_even(x / scale), min, max): the host or the detector's "
        "front end quantizes",
    }
    return model


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def edgestem_round_half_even(model, cfg, state):
    """Move rounding ties of every MultiThreshold on integer inputs from half up to half to even."""
    import numpy as np

    nodes = {}
    for node in model.graph.node:
        if node.op_type != "MultiThreshold":
            continue
        idt = model.get_tensor_datatype(node.input[0])
        t = model.get_initializer(node.input[1])
        if t is None or not idt.is_integer():
            nodes[node.name] = {
                "adjusted": 0,
                "skipped": "input not integer" if t is not None else "thresholds not constant",
            }
            continue
        attrs = {a.name: a.f for a in node.attribute if a.name in ("out_scale", "out_bias")}
        out_scale, out_bias = attrs.get("out_scale", 1.0), attrs.get("out_bias", 0.0)
        t = np.asarray(t, dtype=np.float64)
        offset = out_bias / out_scale if out_scale else None
        if offset is None or offset != round(offset) or np.any(np.diff(t, axis=-1) < 0):
            nodes[node.name] = {"adjusted": 0, "skipped": "output levels not integer or thresholds not ascending"}
            continue
        levels = np.arange(1, t.shape[-1] + 1) + int(round(offset))  # level reached when crossing threshold i
        up_is_odd = (levels % 2 != 0)[None, :]
        tie = t == np.round(t)
        adjust = tie & up_is_odd
        model.set_initializer(node.input[1], (t + adjust).astype(np.float32))
        nodes[node.name] = {"adjusted": int(adjust.sum()), "thresholds": int(t.size)}
    state["tie_rounding"] = {
        "mode": "half_even",
        "nodes": nodes,
        "exact": all("skipped" not in v for v in nodes.values()),
    }
    return model


def edgestem_integer_tail(model, cfg, state):
    """``X(int) -> Mul(c) -> Add(b)`` becomes ``X -> Add(b / c) -> Mul(c)`` where ``b / c`` is integral."""
    import numpy as np
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    moved = []
    for mul in list(model.graph.node):
        if mul.op_type != "Mul":
            continue
        c = model.get_initializer(mul.input[1])
        consumers = model.find_consumers(mul.output[0]) or []
        if c is None or np.asarray(c).size != 1 or len(consumers) != 1 or consumers[0].op_type != "Add":
            continue
        add = consumers[0]
        b = model.get_initializer(add.input[1])
        if b is None or not model.get_tensor_datatype(mul.input[0]).is_integer():
            continue
        c = float(np.asarray(c).ravel()[0])
        bi = np.asarray(b, dtype=np.float64) / c
        if c == 0 or np.any(bi != np.round(bi)):
            continue
        x, mid, out = mul.input[0], mul.output[0], add.output[0]
        model.set_initializer(add.input[1], bi.astype(np.float32))
        add.input[0], add.output[0] = x, mid
        mul.input[0], mul.output[0] = mid, out
        nodes = model.graph.node
        nodes.remove(add)
        nodes.insert(list(nodes).index(mul), add)
        moved.append(add.name)
    state["integer_tail"] = moved
    model = model.transform(InferShapes())
    return model.transform(InferDataTypes())


def edgestem_host_dequant(model, cfg, state):
    """Turn the float de-quantising ElementwiseMul at the graph's end back into an ONNX Mul (host side)."""
    from onnx import helper
    from qonnx.transformation.infer_shapes import InferShapes

    reverted = []
    for node in list(model.graph.node):
        if node.op_type != "ElementwiseMul" or model.get_tensor_datatype(node.output[0]).name != "FLOAT32":
            continue
        rest = _downstream(model, node)
        if any(n.domain.startswith("finn.custom_op.fpgadataflow") for n in rest):
            continue  # a float Mul inside the accelerator: leave it to FINN
        idx = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(idx, helper.make_node("Mul", list(node.input), list(node.output), name=node.name))
        reverted.append(node.name)
    state["host_dequant"] = reverted
    return model.transform(InferShapes())


def _downstream(model, node):
    seen, todo, out = set(), [node], []
    while todo:
        for t in todo.pop().output:
            for c in model.find_consumers(t) or []:
                if c.name not in seen:
                    seen.add(c.name)
                    out.append(c)
                    todo.append(c)
    return out


EDGESTEM_STEPS = {
    f.__name__: f
    for f in (edgestem_integer_input, edgestem_round_half_even, edgestem_integer_tail, edgestem_host_dequant)
}


# --- reports ------------------------------------------------------------------------------------


def _layer_table(model, weight_layers):
    """Folding, cycles and bounds of every hardware layer (FINN's partition model after the build), in stream order."""
    from qonnx.custom_op.registry import getCustomOp

    rows = {}
    mvau = 0
    for node in model.graph.node:
        if not node.domain.startswith("finn.custom_op.fpgadataflow"):
            continue
        inst = getCustomOp(node)
        attrs = inst.get_nodeattr_types()
        row = {"op_type": node.op_type}
        for a in FOLDING_ATTRS:
            if a in attrs:
                value = inst.get_nodeattr(a)
                row[a] = _text(value) if isinstance(value, bytes) else value
        for knob, bounds in MAX_ATTRS.items():
            if knob in row:
                for b in bounds:
                    if b in attrs:
                        row[f"max_{knob}"] = int(inst.get_nodeattr(b))
                        break
        try:
            row["cycles"] = int(inst.get_exp_cycles())
        except Exception:  # noqa: BLE001 - a layer without a cycle model
            row["cycles"] = None
        if node.op_type.startswith("MVAU") or node.op_type.startswith("VVAU"):
            row["layer"] = weight_layers[mvau] if mvau < len(weight_layers) else None
            mvau += 1
        row["input_datatype"] = inst.get_input_datatype(0).name
        row["output_datatype"] = inst.get_output_datatype(0).name
        rows[node.name] = row
    return rows


def _interface(parent, state):
    """What runs on the host around the accelerator, and the datatypes that cross the boundary."""
    part = [n for n in parent.graph.node if n.op_type == "StreamingDataflowPartition"]
    if not part:
        return
    nodes = list(parent.graph.node)
    i = nodes.index(part[0])
    state["partition"] = {
        "host_before": [n.op_type for n in nodes[:i]],
        "host_after": [n.op_type for n in nodes[i + 1 :]],
        "input_datatype": parent.get_tensor_datatype(part[0].input[0]).name,
        "output_datatype": parent.get_tensor_datatype(part[0].output[0]).name,
    }


# --- the build ----------------------------------------------------------------------------------


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _finn_env(out: Path) -> None:
    """FINN_BUILD_DIR (default OUT/build), FINN_RTLLIB and FINN_CUSTOM_HLS from the installed finn package."""
    import importlib.util

    spec = importlib.util.find_spec("finn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the finn package (finn-plus) is not installed in this Python; run scripts/setup-finn.sh")
    root = Path(list(spec.submodule_search_locations)[0])
    os.environ.setdefault("FINN_BUILD_DIR", str((out / "build").resolve()))
    os.environ.setdefault("FINN_RTLLIB", str(root / "finn-rtllib"))
    os.environ.setdefault("FINN_CUSTOM_HLS", str(root / "custom_hls"))
    Path(os.environ["FINN_BUILD_DIR"]).mkdir(parents=True, exist_ok=True)


def _dataflow_config(conf: dict, out: Path):
    from finn.builder.build_dataflow_config import AutoFIFOSizingMethod, DataflowBuildConfig, DataflowOutputType

    outputs = [DataflowOutputType.ESTIMATE_REPORTS]
    if conf.get("vivado"):
        outputs += [DataflowOutputType.STITCHED_IP, DataflowOutputType.OOC_SYNTH]
    kwargs = {
        "output_dir": str(out),
        "synth_clk_period_ns": float(conf["clock_ns"]),
        "fpga_part": conf["fpga_part"],
        "target_fps": int(conf["target_fps"]) if conf.get("target_fps") else None,
        "folding_two_pass_relaxation": bool(conf.get("folding_two_pass_relaxation", True)),
        "mvau_wwidth_max": int(conf.get("mvau_wwidth_max", 36)),
        "standalone_thresholds": bool(conf.get("standalone_thresholds", True)),
        "minimize_bit_width": True,
        "generate_outputs": outputs,
        "save_intermediate_models": True,
    }
    if not conf.get("vivado"):
        kwargs["auto_fifo_strategy"] = AutoFIFOSizingMethod.FORCE_MINIMAL_FIFOS
    if conf.get("folding_config_file"):
        kwargs["folding_config_file"] = Path(conf["folding_config_file"])
    return DataflowBuildConfig(**kwargs)


def build(onnx: Path, config: Path, out: Path) -> int:
    """Run the configured steps on ``onnx``; 0 on success, 1 on a failed step (named in steps.json)."""
    conf = json.loads(config.read_text())
    out.mkdir(parents=True, exist_ok=True)
    _finn_env(out)
    if not conf.get("vivado"):
        import finn.xsi

        finn.xsi.SimEngine = None  # no Vivado XSI: the build steps import without it
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup
    from qonnx.core.modelwrapper import ModelWrapper

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="[%(levelname)s] %(message)s", force=True)
    cfg = _dataflow_config(conf, out)
    model = ModelWrapper(str(onnx))
    weight_layers = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    state: dict = {"versions": {"finn": _version("finn-plus"), "qonnx": _version("qonnx"), "onnx": _version("onnx")}}
    record = {"steps": [], "failed": None, "finished": False}
    models = out / "intermediate_models"
    models.mkdir(exist_ok=True)
    for name in conf["steps"]:
        if name in EDGESTEM_STEPS:
            fn = (lambda f: lambda m, c: f(m, c, state))(EDGESTEM_STEPS[name])
        elif name in build_dataflow_step_lookup:
            fn = build_dataflow_step_lookup[name]
        else:
            record["failed"] = {"step": name, "error": f"unknown build step {name}"}
            _write_json(out / STEPS_FILE, record)
            return 1
        if name == PARTITION_STEP:
            model.save(str(out / EMULATION_MODEL))
            state["emulation_model"] = EMULATION_MODEL
        _log(f"step {name}")
        t0 = time.perf_counter()
        try:
            model = fn(model, cfg)
        except Exception as exc:  # noqa: BLE001 - reported to the host with the traceback in the log
            traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            record["failed"] = {"step": name, "error": f"{type(exc).__name__}: {first}"}
            _write_json(out / STEPS_FILE, record)
            return 1
        seconds = round(time.perf_counter() - t0, 3)
        model.save(str(models / f"{name}.onnx"))
        record["steps"].append({"name": name, "seconds": seconds})
        _write_json(out / STEPS_FILE, record)
        _log(f"step {name} done in {seconds} s")
    parent = models / "dataflow_parent.onnx"
    if parent.is_file():
        _interface(ModelWrapper(str(parent)), state)
    state["layers"] = _layer_table(model, weight_layers)
    state["weight_layers"] = weight_layers
    report = out / "report"
    report.mkdir(exist_ok=True)
    _write_json(report / BUILD_REPORT, state)
    record["finished"] = True
    _write_json(out / STEPS_FILE, record)
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# --- execution ----------------------------------------------------------------------------------


def quantize_input(x, spec):
    """The input quantizer's integer codes of float patterns: clip(round_half_even(x / scale), min, max)."""
    import numpy as np

    if not spec.get("integer"):
        return np.asarray(x, dtype=np.float32)
    rounding = {"ROUND": np.rint, "FLOOR": np.floor, "CEIL": np.ceil, "ROUND_TO_ZERO": np.trunc}
    rnd = rounding[spec.get("rounding", "ROUND").upper()]  # QONNX's modes; ROUND is half to even
    codes = np.clip(rnd(np.asarray(x, dtype=np.float64) / spec["scale"]), spec["min"], spec["max"])
    return codes.astype(np.float32)


def execute(build_dir: Path, inputs: Path, outputs: Path) -> int:
    """FINN's Python execution of ``build_dir/emulation.onnx`` on ``inputs`` (N, 1, H, W), one pattern at a time."""
    import numpy as np

    os.environ.setdefault("FINN_BUILD_DIR", str((build_dir / "build").resolve()))
    _finn_env(build_dir)
    import finn.xsi

    finn.xsi.SimEngine = None
    from finn.core.onnx_exec import execute_onnx
    from qonnx.core.modelwrapper import ModelWrapper

    state = json.loads((build_dir / "report" / BUILD_REPORT).read_text())
    model = ModelWrapper(str(build_dir / state.get("emulation_model", EMULATION_MODEL)))
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = quantize_input(np.load(inputs), state.get("input", {}))
    out = []
    for xi in x:
        out.append(np.asarray(execute_onnx(model, {iname: xi.reshape(shape)})[oname], dtype=np.float64).reshape(-1))
    y = np.stack(out) if out else np.zeros((0, 0))
    tmp = outputs.with_name(outputs.stem + ".tmp.npy")
    np.save(tmp, y)
    os.replace(tmp, outputs)
    return 0


def main(argv: list[str] | None = None) -> int:
    _own_dir_off_path()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, help="QONNX model (NCHW) to build")
    p.add_argument("--config", type=Path, help="JSON build config written by edgestem.firmware.finn")
    p.add_argument("--out", type=Path, help="output folder of the build")
    p.add_argument("--execute", type=Path, metavar="BUILD_DIR", help="execute BUILD_DIR/emulation.onnx instead")
    p.add_argument("--inputs", type=Path, help="with --execute: patterns (N, 1, H, W) float32 .npy")
    p.add_argument("--outputs", type=Path, help="with --execute: where to write the outputs .npy")
    a = p.parse_args(argv)
    if a.execute is not None:
        if a.inputs is None or a.outputs is None:
            p.error("--execute needs --inputs and --outputs")
        return execute(a.execute, a.inputs, a.outputs)
    if a.onnx is None or a.config is None or a.out is None:
        p.error("a build needs --onnx, --config and --out")
    return build(a.onnx, a.config, a.out)


if __name__ == "__main__":
    sys.exit(main())
