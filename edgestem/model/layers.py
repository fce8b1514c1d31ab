"""Layer factories of the ONE encoder: plain float layers, or Brevitas quantized drop-in layers.

:func:`edgestem.model.encoder.build_encoder` builds the encoder from a factory; which factory a
checkpoint needs is recorded in it (a ``quant`` entry: a :class:`QuantSpec`), so any stage can
rebuild any model without knowing how it was trained (:func:`edgestem.rundir.model_from_checkpoint`).

Every quantizer of :class:`BrevitasLayers` has a power-of-two scale (fixed point): weights
``Int8WeightPerTensorFixedPoint``, ReLU outputs ``Uint8ActPerTensorFixedPoint``, the input an
unsigned fixed-point quantizer, the four outputs a signed one, biases ``IntBias`` whose scale is the
input scale times the weight scale (the bit widths overridden from the ``qat`` config section). That
is the recipe that gives bit-exact hls4ml firmware (docs/toolchain.md); float scales are not offered
because the firmware would silently differ.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from torch import nn

from edgestem.config import QatConfig
from edgestem.errors import ConfigError

QUANT_FORMAT = 1
# brevitas.graph warns on import about an optional CUDA kernel package that CPU QAT does not use.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")


class LayerFactory(Protocol):
    """Makes the layers of the encoder; a quantized factory returns drop-in quantized layers."""

    def input(self) -> nn.Module: ...
    def output(self) -> nn.Module: ...
    def conv(self, name: str, c_in: int, c_out: int, kernel: int) -> nn.Module: ...
    def batchnorm(self, name: str, channels: int) -> nn.Module: ...
    def relu(self, name: str) -> nn.Module: ...
    def pool(self, name: str) -> nn.Module: ...
    def linear(self, name: str, n_in: int, n_out: int, last: bool) -> nn.Module: ...


class FloatLayers:
    """Plain float PyTorch layers."""

    def input(self) -> nn.Module:
        return nn.Identity()

    def output(self) -> nn.Module:
        return nn.Identity()

    def conv(self, name: str, c_in: int, c_out: int, kernel: int) -> nn.Module:
        return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=True)

    def batchnorm(self, name: str, channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels)

    def relu(self, name: str) -> nn.Module:
        return nn.ReLU()

    def pool(self, name: str) -> nn.Module:
        return nn.MaxPool2d(2)

    def linear(self, name: str, n_in: int, n_out: int, last: bool) -> nn.Module:
        return nn.Linear(n_in, n_out)


@dataclass(frozen=True)
class QuantSpec:
    """Bit widths of a quantized encoder; stored in the checkpoint so the model can be rebuilt."""

    bits: int = 6
    input_bits: int = 8
    output_bits: int = 16
    bias_bits: int = 16
    per_layer: dict[str, int] = field(default_factory=dict)
    format: int = QUANT_FORMAT

    @classmethod
    def from_config(cls, cfg: QatConfig) -> QuantSpec:
        return cls(cfg.bits, cfg.input_bits, cfg.output_bits, cfg.bias_bits, dict(cfg.per_layer))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        if data.get("format") != QUANT_FORMAT:
            raise ConfigError(f"quantization spec format {data.get('format')} is not supported; rerun edgestem qat")
        return cls(**data)

    def bits_of(self, name: str) -> int:
        """Bit width of a layer by its stable name (``input``, ``conv1``, ``relu1``, ``fc2``, ``output``)."""
        if name in self.per_layer:
            return int(self.per_layer[name])
        if name == "input":
            return self.input_bits
        if name == "output":
            return self.output_bits
        return self.bits


def _quantizers() -> dict[str, Any]:
    from brevitas.quant import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Uint8ActPerTensorFixedPoint,
    )
    from brevitas.quant.scaled_int import IntBias

    return {
        "weight": Int8WeightPerTensorFixedPoint,
        "uact": Uint8ActPerTensorFixedPoint,
        "sact": Int8ActPerTensorFixedPoint,
        "bias": IntBias,
    }


class BrevitasLayers:
    """Layer factory of quantized drop-in layers (Brevitas), power-of-two scales only.

    Quantized tensors flow between layers (``return_quant_tensor=True``) so that each bias is
    quantized with the scale of its layer's input times its weight scale, as in the firmware.
    """

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.q = _quantizers()
        import brevitas.nn as qnn

        self.qnn = qnn

    def input(self) -> nn.Module:
        return self.qnn.QuantIdentity(
            act_quant=self.q["uact"], bit_width=self.spec.bits_of("input"), return_quant_tensor=True
        )

    def output(self) -> nn.Module:
        return self.qnn.QuantIdentity(
            act_quant=self.q["sact"], bit_width=self.spec.bits_of("output"), return_quant_tensor=False
        )

    def _weighted(self, name: str) -> dict[str, Any]:
        """Quantizers of a conv or linear layer: its weights at its bit width, integer biases."""
        return {
            "bias": True,
            "weight_quant": self.q["weight"],
            "weight_bit_width": self.spec.bits_of(name),
            "bias_quant": self.q["bias"],
            "bias_bit_width": self.spec.bias_bits,
            "return_quant_tensor": True,
        }

    def conv(self, name: str, c_in: int, c_out: int, kernel: int) -> nn.Module:
        return self.qnn.QuantConv2d(c_in, c_out, kernel, padding=kernel // 2, **self._weighted(name))

    def batchnorm(self, name: str, channels: int) -> nn.Module:
        raise ConfigError("the quantized encoder has no BatchNorm: fold it first (fold_batchnorm)")

    def relu(self, name: str) -> nn.Module:
        return self.qnn.QuantReLU(act_quant=self.q["uact"], bit_width=self.spec.bits_of(name), return_quant_tensor=True)

    def pool(self, name: str) -> nn.Module:
        return nn.MaxPool2d(2)

    def linear(self, name: str, n_in: int, n_out: int, last: bool) -> nn.Module:
        return self.qnn.QuantLinear(n_in, n_out, **self._weighted(name))


__all__ = ["BrevitasLayers", "FloatLayers", "LayerFactory", "QUANT_FORMAT", "QuantSpec"]
