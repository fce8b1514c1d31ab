"""Backend ``brevitas``: the quantized encoder (QAT, or QAT + pruning) in PyTorch, the bit-exact reference."""

from __future__ import annotations

from pathlib import Path

from edgestem.emulate.float_torch import Backend as _Torch


class Backend(_Torch):
    name = "brevitas"
    exact = True

    def __init__(self, run: Path) -> None:
        from edgestem.emulate import quantized_dir

        super().__init__(run, stage_dir=quantized_dir(run))
