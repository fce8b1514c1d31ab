"""The ONE encoder definition (the part that goes on the FPGA), built from a layer factory.

The float model, quantization-aware training (Brevitas layers), pruning, export and emulation all
build the encoder through :func:`build_encoder`; only the factory differs. The encoder uses only
layers that Brevitas, QONNX, hls4ml and FINN all handle: Conv2d, BatchNorm2d, ReLU, MaxPool2d,
Flatten, Linear.
"""

from __future__ import annotations

import torch
from torch import nn

from edgestem.config import EncoderConfig
from edgestem.model.layers import FloatLayers, LayerFactory

N_OUTPUTS = 4  # raw outputs (o_sx, o_sy, o_sh, o_rot) for the host-side parameter head


def build_encoder(cfg: EncoderConfig, size: int, layers: LayerFactory | None = None) -> nn.Sequential:
    """Encoder for ``(N, 1, size, size)`` inputs -> ``(N, 4)`` raw outputs.

    Layer names (``input``, ``conv1``, ``bn1``, ``relu1``, ``pool1``, ..., ``fc1``, ``relu_fc1``,
    ``fc2``, ``output``) are stable: per-layer bit widths, pruning reports and firmware layer names refer to them.
    """
    layers = layers or FloatLayers()
    if size % (2 ** len(cfg.channels)):
        raise ValueError(
            f"input size {size} is not divisible by 2^{len(cfg.channels)} (one 2x2 pool per conv block); "
            "change preprocess.size or model.encoder.channels"
        )
    mods: list[tuple[str, nn.Module]] = [("input", layers.input())]
    c_in = 1
    for i, c_out in enumerate(cfg.channels, start=1):
        mods.append((f"conv{i}", layers.conv(f"conv{i}", c_in, c_out, cfg.kernel)))
        if cfg.batchnorm:
            mods.append((f"bn{i}", layers.batchnorm(f"bn{i}", c_out)))
        mods.append((f"relu{i}", layers.relu(f"relu{i}")))
        mods.append((f"pool{i}", layers.pool(f"pool{i}")))
        c_in = c_out
    side = size // 2 ** len(cfg.channels)
    n_flat = c_in * side * side
    mods.append(("flatten", nn.Flatten()))
    if cfg.hidden:
        mods.append(("fc1", layers.linear("fc1", n_flat, cfg.hidden, last=False)))
        mods.append(("relu_fc1", layers.relu("relu_fc1")))
        mods.append(("fc2", layers.linear("fc2", cfg.hidden, N_OUTPUTS, last=True)))
    else:
        mods.append(("fc1", layers.linear("fc1", n_flat, N_OUTPUTS, last=True)))
    mods.append(("output", layers.output()))
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(mods))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_macs(encoder: nn.Sequential, size: int) -> int:
    """Multiply-accumulates of one forward pass (convs and linears), measured with forward hooks."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += int(out[0].numel()) * k
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        encoder(torch.zeros(1, 1, size, size))
    encoder.train(was_training)
    for h in handles:
        h.remove()
    return total
