"""Backend ``finn``: FINN's own Python execution of the run's FINN build, in FINN's environment.

Runs ``RUN/firmware/finn/emulation.onnx`` (the graph right before FINN's dataflow partition:
FINN's hardware layers with the thresholds, bit widths and integer interface the firmware gets)
through :mod:`edgestem.firmware.finn_driver` in ``.venv-finn``; patterns and outputs travel as
``.npy`` files. Exact when the build rounded ties half to even like Brevitas (edgestem's
``edgestem_round_half_even`` step, the default); a build with FINN's own half-up ties is not, and
differs by an output LSB or more wherever an activation sits on a tie.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgestem.errors import EdgestemError


class Backend:
    name = "finn"
    exact = True  # per build: False when its thresholds round ties half up (see __init__)

    def __init__(self, run: Path) -> None:
        from edgestem.firmware.finn import BUILD_REPORT, finn_python
        from edgestem.firmware.registry import REPORT_FILE
        from edgestem.rundir import firmware_dir

        self.build_dir = firmware_dir(run, "finn")
        report = self.build_dir / REPORT_FILE
        built = self.build_dir / "report" / BUILD_REPORT
        if not report.is_file() or not built.is_file():
            raise EdgestemError(f"{run}: no FINN build ({report}); run edgestem firmware --backend finn --run {run}")
        finn_python()  # the one-line error about the FINN environment, now rather than at predict
        info = json.loads(built.read_text())
        self.exact = bool(info.get("tie_rounding", {}).get("exact", False))
        self.input = info.get("input", {})

    def predict(self, x: np.ndarray) -> np.ndarray:
        from edgestem.firmware.finn import execute

        return execute(self.build_dir, np.ascontiguousarray(x, dtype=np.float32))
