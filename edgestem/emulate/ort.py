"""Backend ``onnxruntime``: the QCDQ export (``RUN/export/encoder_qcdq.onnx``) under ONNX Runtime.

The flavour for embedded CPUs (ARM boards, the Zynq's own cores). ``edgestem export --format qcdq``
measures and states how far it is from Brevitas; it is not required to be bit-exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgestem.errors import EdgestemError


class Backend:
    name = "onnxruntime"
    exact = False

    def __init__(self, run: Path) -> None:
        from edgestem.export.qcdq import QCDQ_FILE
        from edgestem.export.qonnx import require
        from edgestem.rundir import export_dir

        path = export_dir(run) / QCDQ_FILE
        if not path.is_file():
            raise EdgestemError(
                f"{run}: no {path.relative_to(run)}; run edgestem export --run {run} --format qcdq first"
            )
        ort = require("onnxruntime")
        ort.set_default_logger_severity(3)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        out = [self.session.run(None, {self.input: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
        return np.concatenate(out).astype(np.float64)
