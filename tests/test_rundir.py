"""The run directory: layout, checkpoints, and the model and data of a stage."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgestem import rundir
from edgestem.config import load_config
from edgestem.data.io import write_4dstem
from edgestem.errors import DataError, EdgestemError


def test_layout_names_each_stage_once(tmp_path):
    assert rundir.stage_dir(tmp_path, "train") == tmp_path
    assert rundir.stage_dir(tmp_path, "float") == tmp_path
    assert rundir.stage_dir(tmp_path, "qat") == tmp_path / "qat"
    assert rundir.stage_dir(tmp_path, "prune") == tmp_path / "prune"
    assert rundir.checkpoint_path(tmp_path / "qat") == tmp_path / "qat" / "checkpoint.pt"
    assert rundir.config_path(tmp_path) == tmp_path / "config.yaml"
    assert rundir.firmware_dir(tmp_path, "hls4ml") == tmp_path / "firmware" / "hls4ml"
    assert rundir.emulate_path(tmp_path, "qonnx") == tmp_path / "emulate" / "qonnx.h5"
    with pytest.raises(EdgestemError, match="unknown stage 'export'"):
        rundir.stage_dir(tmp_path, "export")


def test_missing_or_damaged_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(EdgestemError, match="no checkpoint.pt; train first"):
        rundir.load_checkpoint(tmp_path)
    rundir.checkpoint_path(tmp_path).write_bytes(b"not a checkpoint")
    with pytest.raises(EdgestemError, match="unreadable checkpoint"):
        rundir.load_checkpoint(tmp_path)
    with pytest.raises(EdgestemError, match="not a run directory"):
        rundir.load_run_config(tmp_path)


def test_importing_it_loads_no_torch():
    code = "import sys, edgestem.rundir\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def float_run(tmp_path_factory, tiny_h5):
    from edgestem.train import train

    cfg = load_config(
        None,
        {"preprocess.size": 32, "model.encoder.channels": [4, 8], "model.encoder.hidden": 8, "train.epochs": 1},
    )
    run = tmp_path_factory.mktemp("rundir") / "run"
    train(cfg, tiny_h5, run)
    return run


def test_open_stage_rebuilds_the_model_and_reads_data_for_it(float_run, tiny_h5, tmp_path):
    import numpy as np

    stage = rundir.open_stage(float_run)
    assert stage.cfg.preprocess.size == 32 and not stage.model.training
    d = stage.read(tiny_h5, reference="0:4,0:4")
    assert d.x.shape[1:] == (1, 32, 32) and stage.symmetry(d) == "hex"
    assert rundir.trained_on(float_run) == tiny_h5
    with pytest.raises(EdgestemError, match="reference"):
        stage.read(tiny_h5, reference="0:x,0:4")
    small = tmp_path / "small.h5"  # 16 x 16 px patterns cannot be cropped to the run's 32 x 32 inputs
    write_4dstem(small, np.ones((2, 2, 16, 16), np.float32))
    with pytest.raises(DataError, match="16x16 pixels are smaller than preprocess.size 32"):
        stage.read(small)
