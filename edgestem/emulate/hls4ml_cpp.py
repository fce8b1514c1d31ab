"""Backend ``hls4ml``: the firmware's C++ (``RUN/firmware/hls4ml/``, compiled by ``edgestem firmware``).

The library is called through ctypes, one pattern at a time; ``workers`` processes split the
patterns into chunks (each loads the library itself), which is what makes a 32 x 32 scan quick on
2 cores. Must equal the Brevitas model bit for bit (the firmware step checks it, ``--check`` too).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _chunk(run: str, x: np.ndarray) -> np.ndarray:
    from edgestem.firmware.hls4ml import load_emulator

    return load_emulator(run)(x)


class Backend:
    name = "hls4ml"
    exact = True

    def __init__(self, run: Path, workers: int | None = None) -> None:
        from edgestem.firmware.hls4ml import load_emulator

        self.run = run
        self.single = load_emulator(run)  # fails here, with a one-line error, when there is no firmware
        self.workers = workers or min(4, os.cpu_count() or 1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.workers <= 1 or len(x) < 32:
            return np.asarray(self.single(x), dtype=np.float64)
        chunks = np.array_split(x, self.workers)
        with ProcessPoolExecutor(self.workers) as pool:
            parts = list(pool.map(_chunk, [str(self.run)] * len(chunks), chunks))
        return np.concatenate(parts).astype(np.float64)
