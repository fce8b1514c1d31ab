"""Backend ``verilator``: the generated RTL (``RUN/firmware/rtl``) simulated cycle by cycle in Verilator.

Patterns are quantized to the input integers on the host (as Brevitas's input quantizer rounds
them), run through the compiled testbench (built by ``edgestem firmware --backend rtl``, or here if
missing), and the output integers scaled by the output quantizer's power of two. Bit-exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class Backend:
    name = "verilator"
    exact = True

    def __init__(self, run: Path) -> None:
        from edgestem.export import intnet
        from edgestem.firmware.rtl import load_project

        self.out, metrics = load_project(run)
        self.net = intnet.load(metrics["export"]["onnx"])
        self.facts: dict[str, Any] = {}

    def predict(self, x: np.ndarray) -> np.ndarray:
        from edgestem.firmware.rtl import simulate_project

        y, self.facts = simulate_project(self.out, self.net, self.net.quantize_input(x), build=False)
        return self.net.to_float(y)
