"""The quantized encoder as integers and shifts, read from the QONNX graph, and its numpy forward.

This is exactly what the generated RTL computes (``edgestem firmware --backend rtl``): every
tensor is an integer with a power-of-two exponent, so

- the input is ``clip(round(x * 2^-e_in), 0, 2^b - 1)`` (done on the host: the RTL takes integers);
- a conv or linear layer accumulates ``sum(w * x) + bias`` in integers at exponent ``e_in + e_w``
  (Brevitas's ``IntBias`` quantizes the bias at exactly that scale);
- the quantizer after it (ReLU's, or the output's) is a shift by ``e_out - e_acc`` bits that rounds
  half to even (Brevitas/PyTorch ``round``, QONNX ``ROUND``) and clips to its integer range;
- a 2x2 max pool takes the largest of four integers (after the ReLU quantizer, as in Brevitas);
- flatten is the NCHW order PyTorch uses: the address ``(c * H + y) * W + x``.

A dense layer is a 1 x 1 conv over a 1 x 1 input with ``N_in`` channels, so the RTL has one kind of
layer engine. Read from ``RUN/export/encoder_nchw.onnx`` (the graph before the channels-last step,
whose flatten is PyTorch's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgestem.errors import EdgestemError


def int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """Integer range of a QONNX Quant node (``min_int``/``max_int`` of QONNX)."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


def shift_round(acc: np.ndarray, shift: int) -> np.ndarray:
    """``acc * 2^-shift`` rounded half to even (exact integers; ``shift <= 0`` is a left shift)."""
    acc = np.asarray(acc, dtype=np.int64)
    if shift <= 0:
        return acc << -shift
    floor = acc >> shift
    rem = acc - (floor << shift)
    half = 1 << (shift - 1)
    return floor + ((rem > half) | ((rem == half) & (floor & 1 == 1)))


def bits_for(n: int) -> int:
    """Bits of an unsigned counter or address over ``n`` values (at least 1)."""
    return max(1, (int(n) - 1).bit_length())


@dataclass
class Layer:
    """One conv (or dense, as a 1 x 1 conv) layer with its requantizer and optional 2 x 2 max pool."""

    name: str
    weight: np.ndarray  # (C_out, C_in, K, K) int64
    bias: np.ndarray  # (C_out,) int64, at exponent acc_exp
    in_shape: tuple[int, int, int]  # (C, H, W) of the input feature map
    in_bits: int  # input activation bits (unsigned)
    weight_bits: int
    bias_bits: int
    acc_exp: int  # e_in + e_w
    out_bits: int
    out_signed: bool
    out_lo: int
    out_hi: int
    out_exp: int
    relu: bool
    pool: int = 1  # 2: a 2 x 2 max pool after the quantizer

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2])

    @property
    def out_shape(self) -> tuple[int, int, int]:
        _, h, w = self.in_shape
        return int(self.weight.shape[0]), h // self.pool, w // self.pool

    @property
    def shift(self) -> int:
        """Right shift of the accumulator onto the output quantizer's grid (negative: left shift)."""
        return self.out_exp - self.acc_exp

    @property
    def acc_bits(self) -> int:
        """Signed accumulator width that holds every partial sum (bound from the actual weights)."""
        xmax = 2**self.in_bits - 1
        w = np.abs(self.weight).reshape(len(self.weight), -1).sum(axis=1)
        bound = int((w * xmax + np.abs(self.bias)).max(initial=0))
        return max(bound.bit_length(), self.bias_bits - 1, self.out_bits) + 2

    @property
    def macs(self) -> int:
        c, h, w = self.in_shape
        return int(self.weight.size) * h * w


@dataclass
class IntNet:
    """The encoder as integer layers: input quantizer, layers, output exponent."""

    in_shape: tuple[int, int, int]
    in_bits: int
    in_exp: int
    layers: list[Layer] = field(default_factory=list)

    @property
    def out_exp(self) -> int:
        return self.layers[-1].out_exp

    @property
    def out_bits(self) -> int:
        return self.layers[-1].out_bits

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float patterns ``(N, 1, H, W)`` -> the input integers, as Brevitas's input quantizer rounds them."""
        lo, hi = int_range(self.in_bits, False, False)
        scaled = np.asarray(x, dtype=np.float32).astype(np.float64) * 2.0**-self.in_exp
        return np.clip(np.rint(scaled), lo, hi).astype(np.int64)

    def forward_int(self, xq: np.ndarray, batch: int = 64) -> np.ndarray:
        """Integer forward of input integers ``(N, 1, H, W)``: output integers ``(N, 4)``."""
        xq = np.asarray(xq, dtype=np.int64)
        return np.concatenate([self._forward(xq[i : i + batch]) for i in range(0, len(xq), batch)])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float patterns -> the encoder's outputs ``(N, 4)`` float64, as the RTL's integers times 2^e_out."""
        return self.forward_int(self.quantize_input(x)).astype(np.float64) * 2.0**self.out_exp

    def to_float(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) * 2.0**self.out_exp

    def _forward(self, a: np.ndarray) -> np.ndarray:
        from numpy.lib.stride_tricks import sliding_window_view

        for layer in self.layers:
            n = len(a)
            a = a.reshape(n, *layer.in_shape)
            k = layer.kernel
            pad = k // 2
            padded = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            win = sliding_window_view(padded, (k, k), axis=(2, 3))  # (N, C, H, W, K, K)
            # float64 matmul is exact here: every product and partial sum is an integer far below 2^53.
            acc = np.einsum("nchwij,ocij->nohw", win.astype(np.float64), layer.weight.astype(np.float64))
            acc = np.rint(acc).astype(np.int64) + layer.bias[None, :, None, None]
            y = np.clip(shift_round(acc, layer.shift), layer.out_lo, layer.out_hi)
            if layer.pool > 1:
                p = layer.pool
                c, h, w = y.shape[1:]
                y = y[:, :, : h // p * p, : w // p * p].reshape(n, c, h // p, p, w // p, p).max(axis=(3, 5))
            a = y
        return a.reshape(len(a), -1)

    def summary(self) -> dict[str, Any]:
        """Per-layer shapes, bit widths, exponents and shifts (for firmware.json)."""
        return {
            "input": {"shape": list(self.in_shape), "bits": self.in_bits, "exp": self.in_exp},
            "layers": [
                {
                    "name": la.name,
                    "in_shape": list(la.in_shape),
                    "out_shape": list(la.out_shape),
                    "kernel": la.kernel,
                    "pool": la.pool,
                    "in_bits": la.in_bits,
                    "weight_bits": la.weight_bits,
                    "acc_bits": la.acc_bits,
                    "acc_exp": la.acc_exp,
                    "out_bits": la.out_bits,
                    "out_signed": la.out_signed,
                    "out_exp": la.out_exp,
                    "shift": la.shift,
                    "relu": la.relu,
                    "macs": la.macs,
                }
                for la in self.layers
            ],
            "output": {"bits": self.out_bits, "exp": self.out_exp},
            "macs": self.macs,
        }


# --- reading the QONNX graph ---------------------------------------------------------------------


def _exp(scale: np.ndarray, what: str) -> int:
    s = np.asarray(scale, dtype=np.float64).ravel()
    if s.size == 0 or np.any(s != s[0]):
        raise EdgestemError(f"{what}: per-channel scales are not supported by the RTL generator")
    mantissa, e = np.frexp(s[0])
    if s[0] <= 0 or mantissa != 0.5:
        raise EdgestemError(f"{what}: scale {s[0]:.8g} is not a power of two; the RTL needs fixed-point quantizers")
    return int(e) - 1


class _Graph:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.nodes = list(model.graph.node)
        self.init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)

    @staticmethod
    def attrs(node: Any) -> dict[str, Any]:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def quant(self, node: Any) -> dict[str, Any]:
        """Bits, sign, narrow, exponent of a Quant node (rounding must be half-to-even, zero point 0)."""
        a = self.attrs(node)
        mode = a.get("rounding_mode", b"ROUND")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "ROUND":
            raise EdgestemError(f"Quant node {node.name}: rounding mode {mode}; the RTL rounds half to even (ROUND)")
        scale, zp, bits = (self.init.get(node.input[i]) for i in (1, 2, 3))
        if scale is None or zp is None or bits is None:
            raise EdgestemError(f"Quant node {node.name}: scale, zero point or bit width computed at run time")
        if np.any(np.asarray(zp) != 0):
            raise EdgestemError(f"Quant node {node.name}: non-zero zero point; the RTL needs symmetric quantizers")
        b = np.asarray(bits).ravel()
        signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
        lo, hi = int_range(int(b[0]), signed, narrow)
        return {
            "bits": int(b[0]),
            "signed": signed,
            "narrow": narrow,
            "exp": _exp(scale, f"Quant node {node.name}"),
            "lo": lo,
            "hi": hi,
            "scale": np.asarray(scale, dtype=np.float64),
        }

    def const_int(self, tensor: str, what: str) -> tuple[np.ndarray, dict[str, Any]]:
        """Integers of a quantized constant (a Quant node on an initializer): ``clip(round(w / s))``."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "Quant" or node.input[0] not in self.init:
            raise EdgestemError(f"{what}: not a quantized constant (no Quant node on an initializer)")
        q = self.quant(node)
        w = np.asarray(self.init[node.input[0]], dtype=np.float64) / q["scale"]
        return np.clip(np.rint(w), q["lo"], q["hi"]).astype(np.int64), q

    def next_node(self, tensor: str) -> Any:
        users = self.consumers.get(tensor, [])
        if len(users) != 1:
            raise EdgestemError(f"tensor {tensor} feeds {len(users)} nodes; the RTL generator needs a chain")
        return users[0]


def from_onnx(model: Any) -> IntNet:
    """The integer network of an NCHW QONNX graph of the encoder (``encoder_nchw.onnx``)."""
    g = _Graph(model)
    graph_in = model.graph.input[0]
    dims = [d.dim_value for d in graph_in.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 1:
        raise EdgestemError(f"graph input {graph_in.name} has shape {dims}; the RTL generator needs (1, 1, H, W)")
    node = g.next_node(graph_in.name)
    if node.op_type != "Quant":
        raise EdgestemError("the graph input is not quantized first; export the QAT encoder (edgestem export)")
    qin = g.quant(node)
    if qin["signed"]:
        raise EdgestemError("signed input quantizer: the RTL generator takes unsigned input integers")
    net = IntNet((1, dims[2], dims[3]), qin["bits"], qin["exp"])
    shape: tuple[int, int, int] = net.in_shape
    act = {"bits": qin["bits"], "exp": qin["exp"], "signed": False}
    tensor = node.output[0]
    graph_out = model.graph.output[0].name
    while tensor != graph_out:
        node = g.next_node(tensor)
        op = node.op_type
        if op in ("Flatten", "Reshape"):
            tensor = node.output[0]
            continue
        if op not in ("Conv", "Gemm", "MatMul"):
            raise EdgestemError(f"{node.op_type} node {node.name} where a Conv or Gemm was expected")
        if act["signed"]:
            raise EdgestemError(f"{node.name}: signed input activations are not supported by the RTL generator")
        w, qw = g.const_int(node.input[1], f"{node.name} weight")
        bias_tensor = node.input[2] if len(node.input) > 2 else None
        out = node.output[0]
        if op == "MatMul":
            w = w.T
            add = g.next_node(out)
            if add.op_type != "Add":
                raise EdgestemError(f"{node.name}: MatMul without a bias Add")
            bias_tensor = next(t for t in add.input if t != out)
            out = add.output[0]
        elif op == "Gemm":
            a = g.attrs(node)
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise EdgestemError(f"{node.name}: Gemm with transA/alpha/beta is not supported")
            if not a.get("transB", 0):
                w = w.T
        if bias_tensor is None:
            b, qb = np.zeros(w.shape[0], dtype=np.int64), {"bits": 1, "exp": act["exp"] + qw["exp"]}
        else:
            b, qb = g.const_int(bias_tensor, f"{node.name} bias")
        acc_exp = act["exp"] + qw["exp"]
        if np.any(b != 0) and qb["exp"] != acc_exp:
            raise EdgestemError(f"{node.name}: bias exponent {qb['exp']} is not input + weight exponent {acc_exp}")
        if op == "Conv":
            a = g.attrs(node)
            k = int(w.shape[2])
            if (
                w.shape[2] != w.shape[3]
                or list(a.get("strides", [1, 1])) != [1, 1]
                or list(a.get("pads", [k // 2] * 4)) != [k // 2] * 4
                or a.get("group", 1) != 1
                or list(a.get("dilations", [1, 1])) != [1, 1]
            ):
                raise EdgestemError(f"{node.name}: only square stride-1 'same' convolutions are supported")
            in_shape = shape
        else:
            n_in = int(np.prod(shape))
            if w.shape[1] != n_in:
                raise EdgestemError(f"{node.name}: {w.shape[1]} inputs, the feature map has {n_in}")
            w = w.reshape(w.shape[0], n_in, 1, 1)
            in_shape = (n_in, 1, 1)
        nxt = g.next_node(out)
        relu = nxt.op_type == "Relu"
        if relu:
            nxt = g.next_node(nxt.output[0])
        if nxt.op_type != "Quant":
            raise EdgestemError(f"{node.name}: its output is not quantized ({nxt.op_type} follows)")
        qo = g.quant(nxt)
        tensor = nxt.output[0]
        pool = 1
        if tensor != graph_out:
            after = g.next_node(tensor)
            if after.op_type == "MaxPool":
                a = g.attrs(after)
                if (
                    list(a["kernel_shape"]) != [2, 2]
                    or list(a.get("strides", [2, 2])) != [2, 2]
                    or any(a.get("pads", [0] * 4))
                ):
                    raise EdgestemError(f"{after.name}: only 2 x 2 max pooling with stride 2 is supported")
                pool = 2
                tensor = after.output[0]
        layer = Layer(
            name=node.name,
            weight=w.astype(np.int64),
            bias=b.astype(np.int64),
            in_shape=tuple(int(v) for v in in_shape),
            in_bits=act["bits"],
            weight_bits=qw["bits"],
            bias_bits=qb["bits"],
            acc_exp=acc_exp,
            out_bits=qo["bits"],
            out_signed=qo["signed"],
            out_lo=qo["lo"] if not relu else max(qo["lo"], 0),
            out_hi=qo["hi"],
            out_exp=qo["exp"],
            relu=relu,
            pool=pool,
        )
        net.layers.append(layer)
        shape = layer.out_shape
        act = {"bits": qo["bits"], "exp": qo["exp"], "signed": qo["signed"] and not relu}
    if not net.layers:
        raise EdgestemError("the graph has no conv or linear layer")
    return net


def load(path: str | Path) -> IntNet:
    """The integer network of an exported NCHW QONNX file."""
    import onnx

    return from_onnx(onnx.load(str(path)))


__all__ = ["IntNet", "Layer", "bits_for", "from_onnx", "int_range", "load", "shift_round"]
