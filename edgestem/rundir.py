"""The run directory: the one module that knows its layout, its checkpoints and how to reopen a stage.

::

    RUN/                    a trained run (edgestem train --out RUN, or the output of edgestem run)
      config.yaml           the resolved config the run was trained with
      checkpoint.pt         weights, optimiser state, history, data provenance (written every epoch)
      train.json            the training report
      distill/              the distilled encoder: a run directory (round-<r>/, distill.json)
      qat/                  the QAT stage: a run directory of its own (the same three files, qat.json)
      prune/                the pruning stage: the same (prune.json)
      export/               encoder.onnx, encoder_nchw.onnx, export.json (edgestem export)
      firmware/<backend>/   one firmware project per backend, firmware.json written last
      emulate/<backend>.h5  strain maps through one emulation backend
      report/               the degradation report (edgestem report)

Every model stage (RUN, RUN/qat, RUN/prune) holds a checkpoint from which
:func:`model_from_checkpoint` rebuilds its model, float, quantized or pruned alike;
:func:`open_stage` is "the model of a stage" and :meth:`StageModel.read` "the data it maps",
checked against each other. Importing this module is cheap (torch loads on first use).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgestem.errors import DataError, EdgestemError

if TYPE_CHECKING:
    from edgestem.config import Config
    from edgestem.data.dataset import TrainingData
    from edgestem.model.ccstae import CCSTAE
    from edgestem.model.layers import LayerFactory

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1  # raise when the checkpoint's content changes incompatibly
CONFIG = "config.yaml"
TRAIN_REPORT = "train.json"
DISTILL_DIR = "distill"
QAT_DIR = "qat"
PRUNE_DIR = "prune"
EXPORT_DIR = "export"
FIRMWARE_DIR = "firmware"
EMULATE_DIR = "emulate"
REPORT_DIR = "report"
# The model stages a run directory may hold, in pipeline order: name -> sub-directory.
MODEL_STAGES = {"train": ".", DISTILL_DIR: DISTILL_DIR, QAT_DIR: QAT_DIR, PRUNE_DIR: PRUNE_DIR}


def checkpoint_path(run: str | Path) -> Path:
    return Path(run) / CHECKPOINT


def config_path(run: str | Path) -> Path:
    return Path(run) / CONFIG


def has_checkpoint(run: str | Path) -> bool:
    return checkpoint_path(run).is_file()


def stage_dir(run: str | Path, stage: str) -> Path:
    """The directory of a model stage: ``train`` (or ``float``) is RUN itself, ``qat`` RUN/qat, ``prune`` RUN/prune."""
    sub = MODEL_STAGES.get("train" if stage == "float" else stage)
    if sub is None:
        raise EdgestemError(f"unknown stage {stage!r}: choose one of float, {', '.join(MODEL_STAGES)}")
    return Path(run) if sub == "." else Path(run) / sub


def export_dir(run: str | Path) -> Path:
    return Path(run) / EXPORT_DIR


def firmware_dir(run: str | Path, backend: str | None = None) -> Path:
    """RUN/firmware, or the project of one backend (RUN/firmware/<backend>)."""
    out = Path(run) / FIRMWARE_DIR
    return out if backend is None else out / backend


def emulate_path(run: str | Path, backend: str) -> Path:
    """Where ``edgestem emulate`` writes the maps of one backend by default."""
    return Path(run) / EMULATE_DIR / f"{backend}.h5"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (an interrupted write leaves the previous one).

    Serialised in memory first: torch's zip writer reports a full disk as "unexpected pos"; a plain
    write raises OSError(ENOSPC), which the CLI reports in one line.
    """
    import io

    import torch

    from edgestem.atomic import atomic_path

    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())


def load_checkpoint(run: str | Path) -> dict[str, Any]:
    """Read a run's checkpoint, checking it was written by a compatible edgestem."""
    import torch

    from edgestem import __version__

    path = checkpoint_path(run)
    if not path.is_file():
        raise EdgestemError(f"{run}: no {CHECKPOINT}; train first (edgestem train --out {run})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise EdgestemError(f"{path}: unreadable checkpoint ({type(exc).__name__}); retrain the run") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise EdgestemError(
            f"{path}: checkpoint format {state.get('format') if isinstance(state, dict) else '?'} from edgestem "
            f"{state.get('version') if isinstance(state, dict) else '?'} is not readable by edgestem {__version__}; "
            "retrain the run with this version"
        )
    return state


def trained_on(run: str | Path) -> Path:
    """The data file a run was trained on (recorded in its checkpoint)."""
    return Path(load_checkpoint(run)["data"]["path"])


def layer_factory(state: dict[str, Any]) -> LayerFactory | None:
    """The layer factory a checkpoint's encoder was built with: Brevitas for a quantized one, else None (float)."""
    if not state.get("quant"):
        return None
    from edgestem.model.layers import BrevitasLayers, QuantSpec

    return BrevitasLayers(QuantSpec.from_dict(state["quant"]))


def add_mask_buffers(model: Any, weights: dict[str, Any]) -> None:
    """Register the pruning masks a saved state holds (``<layer>.weight_mask``) so it loads."""
    import torch

    for key, mask in weights.items():
        if key.endswith(".weight_mask"):
            mod = model.get_submodule(key[: -len(".weight_mask")])
            if not hasattr(mod, "weight_mask"):
                mod.register_buffer("weight_mask", torch.ones_like(mask))


def model_from_checkpoint(state: dict[str, Any], layers: LayerFactory | None = None) -> tuple[CCSTAE, Config]:
    """Rebuild the model (and its config) from a checkpoint: float, quantized or pruned alike."""
    import numpy as np

    from edgestem.config import Config
    from edgestem.model.ccstae import CCSTAE

    cfg = Config.model_validate(state["config"])
    if layers is None:
        layers = layer_factory(state)
    model = CCSTAE(
        cfg.model,
        cfg.preprocess.size,
        state["symmetry"],
        np.zeros((cfg.model.dictionaries, cfg.preprocess.size, cfg.preprocess.size), np.float32),
        np.zeros((cfg.preprocess.size, cfg.preprocess.size), np.float32),
        layers,
        smooth_px=cfg.loss.smooth_px,
    )
    add_mask_buffers(model, state["model"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg


def load_run_config(run: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    from edgestem.config import load_config

    path = config_path(run)
    if not path.is_file():
        raise EdgestemError(f"{run}: not a run directory (no {CONFIG})")
    return load_config(path)


@dataclass
class StageModel:
    """The model of one stage directory, rebuilt from its checkpoint, with its config."""

    path: Path
    state: dict[str, Any]
    model: CCSTAE
    cfg: Config

    def read(self, data: str | Path, dataset: str | None = None, reference: str | None = None) -> TrainingData:
        """Read ``data`` for this model: pre-processed to the size it was trained on, ``reference`` checked."""
        from edgestem import strain as S
        from edgestem.data.dataset import load_data

        d = load_data(data, self.cfg, dataset)
        size = self.cfg.preprocess.size
        if d.x.shape[-2:] != (size, size):
            raise DataError(f"{data}: patterns pre-process to {d.x.shape[-2:]}, the run was trained on {size}x{size}")
        try:
            S.reference_mask(d.scan_shape, reference)
        except ValueError as exc:
            raise EdgestemError(str(exc)) from None
        return d

    def symmetry(self, d: TrainingData) -> str | None:
        """The lattice symmetry to compute strain in: the data's, else the one the model was trained with."""
        return self.state["symmetry"] if d.symmetry is None else d.symmetry


def open_stage(run: str | Path) -> StageModel:
    """The model of a stage directory (RUN, RUN/qat, RUN/prune), ready for inference."""
    state = load_checkpoint(run)
    model, cfg = model_from_checkpoint(state)
    return StageModel(Path(run), state, model, cfg)


__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "StageModel",
    "add_mask_buffers",
    "checkpoint_path",
    "config_path",
    "emulate_path",
    "export_dir",
    "firmware_dir",
    "has_checkpoint",
    "layer_factory",
    "load_checkpoint",
    "load_run_config",
    "model_from_checkpoint",
    "open_stage",
    "save_checkpoint",
    "stage_dir",
    "trained_on",
]
