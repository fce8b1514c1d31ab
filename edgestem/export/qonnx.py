"""Brevitas -> QONNX export of the quantized encoder, verified by execution (``edgestem export``).

The QAT encoder (or the pruned one) is exported with ``brevitas.export.export_qonnx`` and cleaned
with QONNX's ``cleanup_model``; then the recipe of hls4ml's own tests turns it channels-last:
``ConvertToChannelsLastAndClean(make_input_channels_last=True)`` -> ``GemmToMatMul`` ->
``cleanup_model``. Nodes are renamed after the encoder's stable layer names (``conv1``,
``relu1``, ``conv1_weight``, ``input_quant``, ``output_quant``, ...), so hls4ml layers and reports use them.

``RUN/export/`` then holds:

- ``encoder.onnx``: the channels-last (NHWC) QONNX graph; what ``edgestem firmware --backend
  hls4ml`` reads (hls4ml refuses NCHW graphs).
- ``encoder_nchw.onnx``: the same graph before the channels-last step; what FINN reads (FINN's
  convolution lowering needs standard NCHW ``Conv`` nodes and does its own NHWC conversion).
- ``export.json``: opset, op counts, bit widths per quantized tensor, MACs and bit operations
  (QONNX's inference-cost analysis), and the verification.

Both graphs are executed with QONNX (``execute_onnx``) on real pre-processed patterns of the
run's data and must reproduce the Brevitas forward exactly; anything else is an error naming the
first mismatching pattern and output, and nothing is written. Every Quant node must have a
power-of-two scale and a zero zero-point: only such fixed-point graphs map bit-exactly onto
``ap_fixed`` firmware (docs/firmware.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import DataError, EdgestemError, ToolMissingError
from edgestem.rundir import EXPORT_DIR, PRUNE_DIR, QAT_DIR, checkpoint_path

SOURCES = ("auto", "qat", "prune")
ONNX_FILE = "encoder.onnx"
NCHW_FILE = "encoder_nchw.onnx"
REPORT_FILE = "export.json"
OUTPUT_NAMES = ("o_sx", "o_sy", "o_sh", "o_rot")  # the encoder's raw outputs, in order


@dataclass
class QuantizedRun:
    """A quantized (QAT or pruned QAT) encoder rebuilt from its checkpoint, with its provenance."""

    encoder: Any  # torch.nn.Sequential of Brevitas layers, eval mode
    cfg: Any  # edgestem.config.Config of that run
    state: dict[str, Any]
    stage: str  # "qat" or "prune"
    path: Path  # the run directory holding checkpoint.pt
    sha256: str  # of checkpoint.pt, so later stages can tell a stale export

    def provenance(self, run: str | Path) -> dict[str, Any]:
        """Where the model came from; ``dir`` is relative to ``run`` so the run directory can move."""
        return {
            "stage": self.stage,
            "dir": os.path.relpath(self.path, run),
            "run": str(self.path),
            "checkpoint": str(checkpoint_path(self.path)),
            "sha256": self.sha256,
        }


def require(module: str) -> Any:
    """Import an optional package of the ``fpga`` extra, or a one-line ToolMissingError."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ToolMissingError(
            f"{module.split('.')[0]} is not installed ({exc}); install the fpga extra: pip install -e '.[fpga]'"
        ) from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _quantized_stage(path: Path) -> str | None:
    """``qat``/``prune`` if ``path/checkpoint.pt`` holds a quantized model; None if it is float or missing."""
    from edgestem.rundir import load_checkpoint

    if not checkpoint_path(path).is_file():
        return None
    state = load_checkpoint(path)
    return str(state.get("stage", "qat")) if state.get("quant") else None


def find_source(run: str | Path, source: str = "auto") -> tuple[str, Path]:
    """Which quantized model to export: ``RUN/prune`` (if quantized), else ``RUN/qat``, else RUN itself.

    ``source`` ``qat`` or ``prune`` insists on that one. RUN may also be a QAT or pruned run
    directory itself (``edgestem qat --out``).
    """
    run = Path(run)
    if source not in SOURCES:
        raise EdgestemError(f"--source {source!r}: choose {', '.join(SOURCES)}")
    if not run.is_dir():
        raise EdgestemError(f"{run}: no such run directory; train first (edgestem train --out {run})")
    found = {name: run / name for name in (PRUNE_DIR, QAT_DIR) if _quantized_stage(run / name)}
    own = _quantized_stage(run)
    if own in ("qat", "prune"):
        found.setdefault(own, run)
    wanted = ("prune", "qat") if source == "auto" else (source,)
    for name in wanted:
        if name in found:
            return name, found[name]
    if source == "prune":
        if checkpoint_path(run / PRUNE_DIR).is_file():
            raise EdgestemError(
                f"{run}/prune holds a float model; firmware needs a quantized one: "
                f"prune the QAT run (edgestem prune --run {run} --from qat) or use --source qat"
            )
        raise EdgestemError(f"{run}: no pruned run ({checkpoint_path(run / PRUNE_DIR)}); run edgestem prune first")
    raise EdgestemError(
        f"{run}: no QAT checkpoint ({checkpoint_path(run / QAT_DIR)}); run edgestem qat --run {run} first "
        "(firmware is made from the quantized encoder)"
    )


def load_quantized(run: str | Path, source: str = "auto") -> QuantizedRun:
    """The quantized encoder of a run (see :func:`find_source`), rebuilt as a Brevitas model."""
    stage, path = find_source(run, source)
    require("brevitas")
    return load_checkpoint_dir(path, stage)


def load_checkpoint_dir(path: Path, stage: str) -> QuantizedRun:
    """A quantized run directory rebuilt as a Brevitas model (:class:`QuantizedRun`)."""
    from edgestem.rundir import load_checkpoint, model_from_checkpoint

    state = load_checkpoint(path)
    if not state.get("quant"):
        raise EdgestemError(f"{path} holds a float model; run edgestem qat first")
    model, cfg = model_from_checkpoint(state)
    return QuantizedRun(model.encoder.eval(), cfg, state, stage, Path(path), file_sha256(checkpoint_path(path)))


def sample_patterns(q: QuantizedRun, n: int, data: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` evenly spaced patterns of the run's data (or ``data``), through the ONE pre-processing.

    Returns the model inputs ``(n, 1, H, W)`` float32 and their indices in the file.
    """
    from edgestem.data.dataset import load_data

    if n < 1:
        raise EdgestemError(f"--patterns {n}: check at least 1 pattern")
    path = Path(data) if data is not None else Path(q.state["data"]["path"])
    if not path.is_file():
        hint = "" if data is not None else f" (the data {q.path} was trained on); pass --data"
        raise DataError(f"{path}: no such data file{hint}")
    d = load_data(path, q.cfg)
    idx = np.unique(np.linspace(0, len(d.x) - 1, min(n, len(d.x))).round().astype(int))
    return np.ascontiguousarray(d.x[idx]), idx


def brevitas_outputs(encoder: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The Brevitas forward (eval mode) of inputs ``(N, 1, H, W)``: outputs ``(N, 4)`` float32."""
    import torch

    encoder.eval()
    with torch.no_grad():
        return np.concatenate([encoder(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])


# --- graph -------------------------------------------------------------------------------------


def _layer_names(encoder: Any) -> dict[str, list[str]]:
    from torch import nn

    names = [n for n, _ in encoder.named_children()]
    return {
        "weight": [n for n, m in encoder.named_children() if isinstance(m, nn.Conv2d | nn.Linear)],
        "relu": [n for n in names if n.startswith("relu")],
        "pool": [n for n in names if n.startswith("pool")],
    }


def name_nodes(model: Any, encoder: Any) -> Any:
    """Rename the graph's nodes after the encoder's stable layer names (in place; returns the model).

    Conv/Gemm/MatMul -> ``conv1`` ... ``fc2`` (their weight and bias Quant nodes ``conv1_weight``,
    ``conv1_bias``; the bias Add of a MatMul ``fc1_bias_add``), Relu -> ``relu1`` (its Quant
    ``relu1_quant``), MaxPool -> ``pool1``, Flatten/Reshape -> ``flatten``, the Quant of the graph
    input ``input_quant`` and of the graph output ``output_quant``. Any other node, or counts that do not match
    the encoder, mean the export is not the encoder: an error.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    names = _layer_names(encoder)
    todo = {k: list(v) for k, v in names.items()}
    graph_in = {i.name for i in g.input}
    graph_out = {o.name for o in g.output}

    def quant_of(tensor: str) -> Any:
        node = producer.get(tensor)
        return node if node is not None and node.op_type == "Quant" else None

    def take(kind: str, node: Any) -> str:
        if not todo[kind]:
            raise EdgestemError(f"exported graph has more {node.op_type} nodes than the encoder has {kind} layers")
        return todo[kind].pop(0)

    for node in g.node:
        op = node.op_type
        if op in ("Conv", "Gemm", "MatMul"):
            node.name = take("weight", node)
            for idx, role in ((1, "weight"), (2, "bias")):
                q = quant_of(node.input[idx]) if len(node.input) > idx else None
                if q is not None:
                    q.name = f"{node.name}_{role}"
            if op == "MatMul":
                add = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
                if add:
                    add[0].name = f"{node.name}_bias_add"
                    for t in add[0].input:
                        q = quant_of(t)
                        if q is not None:
                            q.name = f"{node.name}_bias"
        elif op == "Relu":
            node.name = take("relu", node)
            for c in consumers.get(node.output[0], []):
                if c.op_type == "Quant":
                    c.name = f"{node.name}_quant"
        elif op == "MaxPool":
            node.name = take("pool", node)
        elif op in ("Flatten", "Reshape"):
            node.name = "flatten"
        elif op == "Quant":
            if node.input[0] in graph_in:
                node.name = "input_quant"  # hls4ml reserves the layer name "input"
            elif node.output[0] in graph_out:
                node.name = "output_quant"
        elif op != "Add":
            raise EdgestemError(f"exported graph has a {op} node ({node.name}) that the encoder does not explain")
    left = [n for kind in todo.values() for n in kind]
    if left:
        raise EdgestemError(f"exported graph lacks the encoder's layer {left[0]}; the export is incomplete")
    unnamed = [n for n in g.node if n.op_type == "Quant" and n.name.startswith("Quant_")]
    if unnamed:
        raise EdgestemError(f"exported graph has a Quant node {unnamed[0].name} that belongs to no encoder layer")
    return model


def _reshape_bias_zero_points(model: Any) -> None:
    """Give bias Quant nodes a (1,)-shaped zero point instead of a 0-d one.

    FINN's ``ExtractBiasFromConv`` cannot reshape a 0-d zero point (``cannot reshape array of size
    1 into shape (1,C,1,1)``); the value, and so the graph's function, is unchanged.
    """
    for node in model.graph.node:
        if node.op_type == "Quant" and node.name.endswith("_bias"):
            zp = model.get_initializer(node.input[2])
            if zp is not None and zp.ndim == 0:
                model.set_initializer(node.input[2], zp.reshape(1))


def export_graphs(encoder: Any, size: int) -> tuple[Any, Any]:
    """The encoder as QONNX: ``(nchw, channels_last)`` ModelWrappers, cleaned, nodes named.

    Exported with the TorchScript exporter (``dynamo=False``: an equivalent graph, 5x faster and
    silent); the channels-last graph takes NHWC input ``(1, H, W, 1)``.
    """
    import tempfile

    import torch

    require("onnxoptimizer")  # Brevitas's QONNX export needs it but does not declare it
    brevitas_export = require("brevitas.export")
    require("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    encoder.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.onnx"
        brevitas_export.export_qonnx(encoder, torch.zeros(1, 1, size, size), export_path=str(path), dynamo=False)
        raw = ModelWrapper(str(path))
    nchw = cleanup_model(raw)
    nhwc = nchw.transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
    with warnings.catch_warnings():
        # It checks Gemm against opset 9 and warns for newer ones; Gemm has not changed in ways it uses.
        warnings.filterwarnings("ignore", message="The GemmToMatMul transformation only offers")
        nhwc = cleanup_model(nhwc.transform(GemmToMatMul()))
    for m in (nchw, nhwc):
        name_nodes(m, encoder)
        _reshape_bias_zero_points(m)
    return nchw, nhwc


def quant_tensors(model: Any) -> list[dict[str, Any]]:
    """Every Quant node: the tensor it makes, its layer and role, bit width, sign, power-of-two exponent."""
    out = []
    for node in model.graph.node:
        if node.op_type != "Quant":
            continue
        attrs = {a.name: (a.i if a.type == a.INT else a.s.decode()) for a in node.attribute}
        scale = model.get_initializer(node.input[1])
        bits = model.get_initializer(node.input[3])
        exps = None if scale is None else np.log2(np.asarray(scale, dtype=np.float64)).ravel()
        layer, _, role = node.name.rpartition("_")
        role = {"weight": "weight", "bias": "bias", "quant": "activation"}[role]
        out.append(
            {
                "node": node.name,
                "tensor": node.output[0],
                "layer": layer,
                "role": role,
                "bits": None if bits is None else int(np.asarray(bits).ravel()[0]),
                "signed": bool(attrs.get("signed", 1)),
                "narrow": bool(attrs.get("narrow", 0)),
                "scale_log2": None if exps is None else (float(exps[0]) if np.all(exps == exps[0]) else exps.tolist()),
            }
        )
    return out


def check_power_of_two(model: Any, what: str = "graph") -> None:
    """Every Quant node needs a constant power-of-two scale and a zero zero-point (fixed point)."""
    for node in model.graph.node:
        if node.op_type != "Quant":
            continue
        scale = model.get_initializer(node.input[1])
        zp = model.get_initializer(node.input[2])
        if scale is None or zp is None:
            raise EdgestemError(
                f"{what}: Quant node {node.name} has a scale or zero point computed at run time; "
                "firmware needs constant power-of-two scales"
            )
        s = np.asarray(scale, dtype=np.float64).ravel()
        mantissa, _ = np.frexp(s)
        bad = ~((s > 0) & (mantissa == 0.5))
        if bad.any():
            raise EdgestemError(
                f"float scales requested for firmware: {what}: Quant node {node.name} has scale "
                f"{s[bad][0]:.8g}, not a power of two; the firmware would silently differ: "
                "quantize with power-of-two (fixed-point) quantizers (edgestem qat)"
            )
        if np.any(np.asarray(zp) != 0):
            raise EdgestemError(
                f"{what}: Quant node {node.name} has a non-zero zero point; firmware needs symmetric "
                "fixed-point quantizers (edgestem qat)"
            )


def execute(model: Any, x: np.ndarray, channels_last: bool) -> np.ndarray:
    """QONNX execution of a graph, one pattern at a time; ``x`` is ``(N, 1, H, W)``, returns ``(N, 4)``.

    One at a time: batched execution of the channels-last graph fails in QONNX's shape inference.
    """
    import onnxruntime
    from qonnx.core.onnx_exec import execute_onnx

    # QONNX runs standard nodes one by one through ONNX Runtime, which warns about their opset stamp.
    onnxruntime.set_default_logger_severity(3)
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    out = []
    for xi in x:
        inp = xi[None].transpose(0, 2, 3, 1) if channels_last else xi[None]
        out.append(execute_onnx(model, {iname: np.ascontiguousarray(inp, dtype=np.float32)})[oname].reshape(-1))
    return np.stack(out)


def compare(got: np.ndarray, ref: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
    """Exact comparison of outputs ``(N, 4)``: counts, max difference, and the first mismatch."""
    got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
    diff = np.abs(got - ref)
    bad = diff != 0
    res: dict[str, Any] = {
        "patterns": int(len(ref)),
        "mismatched_patterns": int(bad.any(axis=1).sum()),
        "mismatched_outputs": int(bad.sum()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "exact": not bad.any(),
    }
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        res["first_mismatch"] = {
            "pattern": int(indices[i]),
            "output": j,
            "name": OUTPUT_NAMES[j] if j < len(OUTPUT_NAMES) else str(j),
            "value": float(got[i, j]),
            "reference": float(ref[i, j]),
        }
    return res


def mismatch_message(what: str, res: dict[str, Any]) -> str:
    f = res["first_mismatch"]
    return (
        f"{what} does not reproduce the Brevitas model: pattern {f['pattern']} output {f['output']} "
        f"({f['name']}) is {f['value']:.8g}, Brevitas gives {f['reference']:.8g} "
        f"({res['mismatched_patterns']} of {res['patterns']} patterns differ, max |diff| {res['max_abs_diff']:.3g})"
    )


def verify(model: Any, x: np.ndarray, ref: np.ndarray, indices: np.ndarray, channels_last: bool, what: str) -> dict:
    """Execute ``model`` on ``x`` and require the Brevitas outputs ``ref`` exactly; returns the comparison."""
    t0 = time.perf_counter()
    res = compare(execute(model, x, channels_last), ref, indices)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    if not res["exact"]:
        raise EdgestemError(mismatch_message(what, res))
    return res


def verify_file(path: str | Path, run: str | Path, source: str = "auto", patterns: int = 16) -> dict[str, Any]:
    """Verify an existing QONNX file against a run's Brevitas model (channels-last if its input is NHWC)."""
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(path))
    q = load_quantized(run, source)
    x, idx = sample_patterns(q, patterns)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return verify(model, x, brevitas_outputs(q.encoder, x), idx, channels_last=shape[-1] == 1, what=str(path))


def inference_cost(nchw: Any) -> dict[str, Any]:
    """MACs, bit operations and weight memory from QONNX's inference-cost analysis (NCHW graph).

    ``*_nonzero`` discounts MACs with a constant zero weight (pruning); the others count them.
    """
    from qonnx.util.inference_cost import inference_cost as qonnx_cost

    out: dict[str, Any] = {}
    for discount in (False, True):
        res = qonnx_cost(nchw, discount_sparsity=discount, cost_breakdown=True)
        tot = res["total_cost"]
        suffix = "_nonzero" if discount else ""
        out[f"macs{suffix}"] = int(tot["total_macs"])
        out[f"bops{suffix}"] = int(tot["total_bops"])
        out[f"weight_bits{suffix}"] = int(tot["total_mem_w_bits"])
        if not discount:
            out["weights"] = int(tot["total_mem_w_elems"])
            out["by_op"] = {
                op: {"macs": int(v["total_macs"]), "bops": int(v["total_bops"])}
                for op, v in res.get("optype_cost", {}).items()
            }
            unsupported = tot.get("unsupported")
            if unsupported and unsupported != "set()":
                out["unsupported"] = unsupported
    return out


def graph_facts(model: Any) -> dict[str, Any]:
    """Opset imports, op counts (by ``op`` or ``domain:op``), input and output shapes."""

    def shape(v: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    ops = Counter(n.op_type if not n.domain else f"{n.domain}:{n.op_type}" for n in model.graph.node)
    return {
        "opset": {o.domain or "ai.onnx": int(o.version) for o in model.model.opset_import},
        "ops": dict(sorted(ops.items())),
        "nodes": len(model.graph.node),
        "input": {"name": model.graph.input[0].name, "shape": shape(model.graph.input[0])},
        "output": {"name": model.graph.output[0].name, "shape": shape(model.graph.output[0])},
    }


def save_model(model: Any, path: Path) -> None:
    """Write an ONNX ModelWrapper atomically."""
    from edgestem.atomic import atomic_path

    with atomic_path(path) as tmp:
        model.save(str(tmp))


# --- the stage ---------------------------------------------------------------------------------


def exported(run: str | Path, filename: str = ONNX_FILE) -> tuple[Path, dict[str, Any], QuantizedRun]:
    """An exported graph of a run, its export report's metrics and the quantized model it came from.

    For the firmware backends: a missing export, an unreadable report or an export older than its
    checkpoint (the checkpoint's hash changed) is a one-line error saying to export again.
    """
    run = Path(run)
    path = run / EXPORT_DIR / filename
    report = run / EXPORT_DIR / REPORT_FILE
    if not path.is_file() or not report.is_file():
        raise EdgestemError(f"{run}: no exported encoder ({path}); run edgestem export --run {run} first")
    try:
        metrics = json.loads(report.read_text())["metrics"]
        src = metrics["source"]
    except (ValueError, KeyError):
        raise EdgestemError(f"{report}: unreadable export report; run edgestem export --run {run} again") from None
    q = load_checkpoint_dir(run / src["dir"], src["stage"])
    if q.sha256 != src["sha256"]:
        raise EdgestemError(f"{path} is older than {src['checkpoint']}; run edgestem export --run {run} again")
    return path, metrics, q


@dataclass
class ExportJob:
    """What an export format's writer gets: the quantized model, sample patterns (model inputs), their
    Brevitas outputs and indices in the data file, the folder to write to; it returns its metrics,
    its output files and the name of its report."""

    q: QuantizedRun
    x: np.ndarray
    ref: np.ndarray
    idx: np.ndarray
    out: Path
    data_path: str
    tolerance_lsb: int = 0


def export_run(
    run: str | Path,
    *,
    fmt: str = "qonnx",
    source: str = "auto",
    patterns: int = 200,
    data: str | Path | None = None,
    tolerance_lsb: int = 0,
) -> dict[str, Any]:
    """``edgestem export``: write ``RUN/export/`` in one format of the registry; returns the report.

    The format's writer (:data:`edgestem.registry.EXPORT_FORMATS`: ``qonnx``, ``qcdq``) gets an
    :class:`ExportJob`, writes its files into ``RUN/export/`` and returns its metrics, its output
    files and the name of its report. ``tolerance_lsb`` applies to
    QCDQ only (output LSBs ONNX Runtime may differ by); QONNX must be exact.
    """
    from edgestem.atomic import write_json
    from edgestem.registry import EXPORT_FORMATS
    from edgestem.runinfo import stage_report

    EXPORT_FORMATS.check(fmt, "--format")
    if patterns < 1:
        raise EdgestemError(f"--patterns {patterns}: check at least 1 pattern")
    t0 = time.perf_counter()
    q = load_quantized(run, source)
    x, idx = sample_patterns(q, patterns, data)
    ref = brevitas_outputs(q.encoder, x)
    out = Path(run) / EXPORT_DIR
    data_path = str(data if data is not None else q.state["data"]["path"])
    writer = EXPORT_FORMATS.get(fmt)
    metrics, outputs, report_file = writer(ExportJob(q, x, ref, idx, out, data_path, tolerance_lsb))
    report = stage_report(
        "export",
        inputs={"run": run, "source": q.provenance(run), "data": data_path},
        outputs=outputs,
        config=q.cfg,
        metrics={"format": fmt, "source": q.provenance(run), **metrics},
        started=t0,
    )
    write_json(out / report_file, report)
    return report


def write_qonnx(job: ExportJob) -> tuple[dict[str, Any], dict[str, Path], str]:
    """Export format ``qonnx``: both graphs, verified exactly on ``job.x`` (``tolerance_lsb`` does not apply)."""
    q, x, ref, idx, out = job.q, job.x, job.ref, job.idx, job.out
    size = q.cfg.preprocess.size
    t = time.perf_counter()
    nchw, nhwc = export_graphs(q.encoder, size)
    export_s = time.perf_counter() - t
    check_power_of_two(nhwc, ONNX_FILE)
    verification = {
        ONNX_FILE: verify(nhwc, x, ref, idx, channels_last=True, what=ONNX_FILE),
        NCHW_FILE: verify(nchw, x, ref, idx, channels_last=False, what=NCHW_FILE),
    }
    t = time.perf_counter()
    cost = inference_cost(nchw)
    cost_s = time.perf_counter() - t
    save_model(nchw, out / NCHW_FILE)
    save_model(nhwc, out / ONNX_FILE)
    metrics = {
        "files": {
            ONNX_FILE: "channels-last (NHWC) QONNX: input of hls4ml (edgestem firmware --backend hls4ml)",
            NCHW_FILE: "NCHW QONNX before the channels-last step: input of FINN",
        },
        "graphs": {ONNX_FILE: graph_facts(nhwc), NCHW_FILE: graph_facts(nchw)},
        "tensors": quant_tensors(nhwc),
        "power_of_two": True,
        "cost": cost,
        "verification": {"data": job.data_path, "indices": idx.tolist(), **verification},
        "seconds": {
            "export": round(export_s, 3),
            "verify": round(sum(v["seconds"] for v in verification.values()), 3),
            "cost": round(cost_s, 3),
        },
    }
    return metrics, {"onnx": out / ONNX_FILE, "onnx_nchw": out / NCHW_FILE}, REPORT_FILE


__all__ = [
    "ExportJob",
    "QuantizedRun",
    "check_power_of_two",
    "compare",
    "execute",
    "export_graphs",
    "export_run",
    "find_source",
    "inference_cost",
    "load_quantized",
    "name_nodes",
    "quant_tensors",
    "sample_patterns",
    "verify",
    "verify_file",
    "write_qonnx",
]
