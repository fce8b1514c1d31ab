"""Backend ``torch``: the float encoder of ``RUN/checkpoint.pt`` (the accuracy reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class Backend:
    name = "torch"
    exact = False  # float arithmetic: compared with the quantized reference, not bit for bit

    def __init__(self, run: Path, stage_dir: Path | None = None) -> None:
        from edgestem.rundir import load_checkpoint, model_from_checkpoint

        self.model, self.cfg = model_from_checkpoint(load_checkpoint(stage_dir or run))
        self.source = stage_dir or run

    def predict(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            return np.concatenate(
                [
                    self.model.encoder(torch.from_numpy(x[i : i + batch])).double().numpy()
                    for i in range(0, len(x), batch)
                ]
            )
