"""Shared fixtures: tiny simulated datasets built once per session."""

from __future__ import annotations

import pytest

from edgestem.config import load_config


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory):
    """A small labelled polycrystal scan (8 x 8 patterns of 64 x 64 px, hex, noise-free)."""
    from edgestem.data.simulate import simulate_to_file

    cfg = load_config(None, {"simulate.scan": 8, "simulate.size": 64, "seed": 3})
    return simulate_to_file(cfg, tmp_path_factory.mktemp("data") / "tiny.h5")


TINY_QAT = {
    "preprocess.size": 32,
    "model.encoder.channels": [4, 8],
    "model.encoder.hidden": 8,
    "train.batch_size": 16,
    "train.lr": 1e-3,
    "train.epochs": 2,
    "qat.bits": 6,
    "qat.epochs": 1,
    "seed": 2,
}


@pytest.fixture(scope="session")
def tiny_qat_run(tmp_path_factory, tiny_h5):
    """A float run and its 6-bit QAT (RUN/qat/) on 32 x 32 inputs, tiny encoder: for export/emulation tests.

    Treat it as read-only: copy it (shutil.copytree) before adding stages to it.
    """
    from edgestem.compress.quantize import qat_run
    from edgestem.train import train

    run = tmp_path_factory.mktemp("tinyqat") / "run"
    cfg = load_config(None, TINY_QAT)
    train(cfg, tiny_h5, run)
    qat_run(run, cfg.qat)
    return run
