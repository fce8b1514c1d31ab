"""Backend ``qonnx``: the exported QONNX graph (``RUN/export/encoder.onnx``) under qonnx's executor.

Bit-exact by construction of the export (``edgestem export`` verifies it); slow (one pattern at a
time, node by node), so full scans in ``edgestem report`` use it on a sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgestem.errors import EdgestemError


class Backend:
    name = "qonnx"
    exact = True

    def __init__(self, run: Path) -> None:
        from edgestem.export.qonnx import ONNX_FILE, require
        from edgestem.rundir import export_dir

        path = export_dir(run) / ONNX_FILE
        if not path.is_file():
            raise EdgestemError(f"{run}: no {path.relative_to(run)}; run edgestem export --run {run} first")
        modelwrapper = require("qonnx.core.modelwrapper")
        self.model = modelwrapper.ModelWrapper(str(path))
        shape = [d.dim_value for d in self.model.graph.input[0].type.tensor_type.shape.dim]
        self.channels_last = shape[-1] == 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        from edgestem.export.qonnx import execute

        return execute(self.model, x, self.channels_last).astype(np.float64)
